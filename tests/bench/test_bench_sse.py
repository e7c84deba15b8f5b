"""SSE parsing: framing rules and streams cut mid-event."""

from __future__ import annotations

import pytest

from loadgen.sse import SSEParser

STREAM = ('data: {"text_output":"a"}\n\n'
          ': a comment\n'
          'event: message\nid: 3\ndata: {"text_output":"b"}\n\n'
          'data:line1\ndata: line2\n\n'
          'data: [DONE]\n\n')
EXPECTED = ['{"text_output":"a"}', '{"text_output":"b"}', "line1\nline2", "[DONE]"]


def test_whole_stream() -> None:
    """Events split on blank lines; comments/other fields ignored; data lines joined by LF."""
    parser = SSEParser()
    assert parser.feed(STREAM) == EXPECTED
    assert not parser.has_partial_event


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13])
def test_any_chunking(size: int) -> None:
    """The same events come out however the stream is split into chunks."""
    for text in (STREAM, STREAM.replace("\n", "\r\n"), STREAM.replace("\n", "\r")):
        parser = SSEParser()
        events = []
        for i in range(0, len(text), size):
            events += parser.feed(text[i:i + size])
        assert events == EXPECTED, (size, repr(text[:20]))


def test_partial_event_is_reported() -> None:
    """A stream that stops inside an event leaves a partial event (a dropped stream)."""
    parser = SSEParser()
    assert parser.feed('data: {"text_output":"a"}\n\ndata: {"text_ou') == ['{"text_output":"a"}']
    assert parser.has_partial_event
    parser = SSEParser()
    assert parser.feed("data: x\n") == []
    assert parser.has_partial_event
