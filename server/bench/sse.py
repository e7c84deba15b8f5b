"""Incremental Server-Sent Events parser: text chunks in, `data` payloads out.

Follows the WHATWG event-stream rules that matter for LLM servers: lines end with LF, CRLF or
CR; an empty line dispatches the event; `data:` lines (one optional space after the colon) are
joined with LF; comment lines (leading `:`) and other fields (`event:`, `id:`, `retry:`) are
ignored. Chunks may split anywhere, including inside a CRLF.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


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
        self._buffer += chunk
        events: list[str] = []
        while True:
            line, found = self._next_line()
            if not found:
                break
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    @property
    def has_partial_event(self) -> bool:
        """True when bytes of an unfinished event are buffered (a stream cut mid-event)."""
        return bool(self._data) or bool(self._buffer.strip())

    def _next_line(self) -> tuple[str, bool]:
        for i, ch in enumerate(self._buffer):
            if ch == "\n":
                line, self._buffer = self._buffer[:i], self._buffer[i + 1:]
                return line, True
            if ch == "\r":
                if i + 1 == len(self._buffer):
                    self._pending_cr = True  # a following "\n" in the next chunk is the same EOL
                    line, self._buffer = self._buffer[:i], ""
                    return line, True
                skip = 2 if self._buffer[i + 1] == "\n" else 1
                line, self._buffer = self._buffer[:i], self._buffer[i + skip:]
                return line, True
        return "", False

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
