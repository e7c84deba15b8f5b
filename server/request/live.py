"""The server's one registry of live generation requests.

A request is in it from its admission into the engine loop until its `Generation` ended (the
only thing that adds and removes). The drain waits for it to empty and aborts what is left, the
in-flight gauges are its counts (`on_count`), the stats route reads its size.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class LiveRequest(Protocol):
    request_id: str
    label: str  # the model name the client asked for (the metrics label)

    def abort(self) -> None: ...


class LiveRequests:
    def __init__(self, on_count: Callable[[str, int], None] | None = None) -> None:
        self._live: dict[str, LiveRequest] = {}
        self._per_label: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        self.abort_reason: str | None = None  # set once abort_all ran (the drain, engine death)
        self.on_count = on_count  # called with (label, its live requests) at every change

    def add(self, req: LiveRequest) -> None:
        self._live[req.request_id] = req
        self._idle.clear()
        self._count(req.label, +1)

    def remove(self, req: LiveRequest) -> None:
        if self._live.pop(req.request_id, None) is None:
            return
        if not self._live:
            self._idle.set()
        self._count(req.label, -1)

    def __len__(self) -> int:
        return len(self._live)

    def count(self, label: str) -> int:
        return self._per_label[label]

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is live; False when `timeout` s passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abort_all(self, reason: str) -> None:
        """Abort every live request; each ends (503) with `reason` as its message."""
        self.abort_reason = reason
        for request_id, req in list(self._live.items()):
            logger.info("aborting %s: %s", request_id, reason)
            req.abort()

    def _count(self, label: str, delta: int) -> None:
        self._per_label[label] += delta
        if self.on_count is not None:
            self.on_count(label, self._per_label[label])
