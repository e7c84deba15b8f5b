"""Incremental Server-Sent Events parser: text chunks in, `data` payloads out.

Follows the WHATWG event-stream rules that matter for LLM servers: lines end with LF, CRLF or
CR; an empty line dispatches the event; `data:` lines (one optional space after the colon) are
joined with LF; comment lines (leading `:`) and other fields (`event:`, `id:`, `retry:`) are
ignored. Chunks may split anywhere, including inside a CRLF.
"""

from __future__ import annotations

import re

_EOL = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Feed decoded text as it arrives; get back the complete events' data payloads."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, chunk: str) -> list[str]:
        """Consume a chunk and return the data of every event it completed, in order."""
        if self._pending_cr and chunk.startswith("\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buffer = self._buffer + chunk
        events: list[str] = []
        pos = 0
        while True:  # one regex scan per line from `pos`: linear in the chunk, not quadratic
            m = _EOL.search(buffer, pos)
            if m is None:
                break
            if m.group() == "\r" and m.end() == len(buffer):
                self._pending_cr = True  # a following "\n" in the next chunk is the same EOL
            event = self._process_line(buffer[pos:m.start()])
            pos = m.end()
            if event is not None:
                events.append(event)
        self._buffer = buffer[pos:]
        return events

    @property
    def has_partial_event(self) -> bool:
        """True when bytes of an unfinished event are buffered (a stream cut mid-event)."""
        return bool(self._data) or bool(self._buffer.strip())

    def _process_line(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None
