"""What the HTTP layer needs from a loaded model: a tokenizer and an EngineLoop-compatible loop.

The real ones come from engine.runtime + scheduler.loop (model_loader.py); tests inject fakes with
the same shape through the app factory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.request import Request, RequestOutput
from scheduler.stats import SchedulerStats
from server.tokenizer_protocol import TokenizerLike


class RequestStreamLike(Protocol):
    request_id: str

    def __aiter__(self) -> AsyncIterator[RequestOutput]: ...

    def abort(self) -> None: ...


class EngineLoopLike(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def add(self, request: Request) -> RequestStreamLike: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> SchedulerStats: ...

    def on_death(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once if the loop dies (at once if it has)."""

    @property
    def num_unfinished(self) -> int: ...


def _noop() -> None:
    return None


@dataclass(slots=True)
class ServingModel:
    """A model ready to serve: tokenizer + running engine loop + the limits clients see."""

    name: str  # canonical model name, e.g. "smollm2-135m-instruct"
    tokenizer: TokenizerLike
    loop: EngineLoopLike
    max_context: int  # prompt + generated tokens at most
    max_batch_size: int
    max_queue_size: int  # 0 -> unbounded
    backend: str  # the executor serving it, e.g. "onnxruntime-cpu" (logged when ready)
    aliases: tuple[str, ...] = ()  # more names clients may use (--served-model-name)
    close: Callable[[], None] = field(default=_noop)  # frees executor resources
