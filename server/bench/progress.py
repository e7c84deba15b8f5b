"""A one-line live progress bar on stderr (redrawn in place when stderr is a terminal)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from server.bench.client import RequestResult

logger = logging.getLogger(__name__)

_WIDTH = 30


class ProgressBar:
    """Counts finished requests of one run; `update` is the loadgen's on_done callback."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, result: RequestResult) -> None:
        self.done += 1
        self.failed += 0 if result.ok else 1
        now = time.perf_counter()
        # On a terminal redraw at most 10x/s; elsewhere (logs, CI) print every ~10%.
        step = max(1, self.total // 10)
        if self._tty and (now - self._last_draw > 0.1 or self.done == self.total):
            self._draw(end="")
            self._last_draw = now
        elif not self._tty and (self.done % step == 0 or self.done == self.total):
            self._draw(end="\n")

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        filled = int(_WIDTH * self.done / max(1, self.total))
        bar = "#" * filled + "-" * (_WIDTH - filled)
        elapsed = time.perf_counter() - self._start
        return (f"{self.label} [{bar}] {self.done}/{self.total} failed={self.failed} "
                f"{elapsed:6.1f}s")

    def _draw(self, end: str) -> None:
        if not self.enabled:
            return
        prefix = "\r" if self._tty else ""
        self.stream.write(prefix + self.line() + end)
        self.stream.flush()
