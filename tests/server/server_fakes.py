"""Small stand-ins for the tokenizer and the EngineLoop, with the documented interfaces.

FakeTokenizer is byte-level: token i < 256 is byte i; 256 = BOS, 257 = EOS, 258 = "<|im_start|>".
FakeLoop runs a step every `step_s`, max `max_batch_size` running sequences, a bounded queue, and
emits the bytes of REPLY (cycled), one token per step, then EOS when max_tokens allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from scheduler.request import (
    EngineDeadError,
    FinishReason,
    QueueFullError,
    Request,
    RequestError,
    RequestOutput,
)
from scheduler.stats import SchedulerStats
from server.serving import ServingModel

BOS, EOS, IM_START = 256, 257, 258
SPECIAL = {IM_START: "<|im_start|>"}
REPLY = "Hi there, 你好 🙂!".encode()


class FakeTokenizer:
    vocab_size = 259
    bos_token_id: int | None = BOS
    eos_token_ids: tuple[int, ...] = (EOS,)
    chat_template: str | None = "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"
    add_bos = True

    def encode(self, text: str, *, parse_special: bool = True,
               add_special_tokens: bool = True) -> list[int]:
        ids = [BOS] if add_special_tokens else []
        while text:
            if parse_special and text.startswith("<|im_start|>"):
                ids.append(IM_START)
                text = text[len("<|im_start|>"):]
                continue
            ids.extend(text[0].encode("utf-8"))
            text = text[1:]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            elif not skip_special_tokens:
                out.extend(SPECIAL.get(i, "<s>" if i == BOS else "</s>").encode())
        return out.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> list[int]:
        ids: list[int] = []
        for m in messages:
            ids.append(IM_START)
            ids.extend(self.encode(m["content"], parse_special=False, add_special_tokens=False))
        return ids + [IM_START]

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id]) if token_id < 256 else b""


@dataclass
class _Seq:
    request: Request
    queue: asyncio.Queue[RequestOutput] = field(default_factory=asyncio.Queue)
    produced: int = 0
    done: bool = False


class FakeStream:
    def __init__(self, loop: FakeLoop, seq: _Seq) -> None:
        self.request_id = seq.request.request_id
        self._loop, self._seq = loop, seq

    async def _iter(self) -> AsyncIterator[RequestOutput]:
        while True:
            out = await self._seq.queue.get()
            yield out
            if out.finished:
                return

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iter()

    def abort(self) -> None:
        self._loop.abort(self.request_id)


class FakeLoop:
    def __init__(self, max_batch_size: int = 4, max_queue_size: int = 8, step_s: float = 0.005,
                 max_context: int = 512, blocks_total: int = 64, die_after: int | None = None):
        self.max_batch_size, self.max_queue_size, self.step_s = max_batch_size, max_queue_size, step_s
        self.max_context, self.blocks_total, self.die_after = max_context, blocks_total, die_after
        self.running: dict[str, _Seq] = {}
        self.waiting: dict[str, _Seq] = {}
        self.aborted: list[str] = []
        self.added: list[Request] = []
        self.steps = 0
        self._dead: BaseException | None = None
        self._on_death: Callable[[str], None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for rid in list(self.running) + list(self.waiting):
            self.abort(rid)
        if self._task:
            self._task.cancel()

    @property
    def dead(self) -> BaseException | None:
        return self._dead

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self.waiting)

    def on_death(self, callback: Callable[[str], None]) -> None:
        self._on_death = callback

    def add(self, request: Request) -> FakeStream:
        if self._dead is not None:
            raise EngineDeadError(str(self._dead))
        p = request.params
        if p.max_tokens < 1 or p.temperature < 0 or p.temperature > 2:
            raise RequestError("invalid sampling parameters")
        if len(request.prompt_token_ids) + p.max_tokens > self.max_context:
            raise RequestError(f"prompt ({len(request.prompt_token_ids)}) + max_tokens "
                               f"({p.max_tokens}) exceeds max_model_len {self.max_context}")
        if self.max_queue_size and len(self.waiting) >= self.max_queue_size:
            raise QueueFullError(f"{self.max_queue_size} requests waiting")
        seq = _Seq(request)
        self.waiting[request.request_id] = seq
        self.added.append(request)
        return FakeStream(self, seq)

    def abort(self, request_id: str) -> None:
        seq = self.running.pop(request_id, None) or self.waiting.pop(request_id, None)
        if seq is not None and not seq.done:
            seq.done = True
            self.aborted.append(request_id)
            seq.queue.put_nowait(RequestOutput(request_id, finished=True,
                                               finish_reason=FinishReason.ABORT,
                                               num_output_tokens=seq.produced))

    def stats(self) -> SchedulerStats:
        used = len(self.running) * 2
        return SchedulerStats(self.steps, len(self.running), len(self.waiting), 0,
                              len(self.running), len(self.running), self.max_batch_size, 2048,
                              self.blocks_total, self.blocks_total - used, used, 0, 16, 0, 0, 0,
                              0, 0.0)

    def _emit(self, seq: _Seq) -> None:
        p = seq.request.params
        tok = REPLY[seq.produced % len(REPLY)]
        seq.produced += 1
        finished = seq.produced >= p.max_tokens
        out = RequestOutput(seq.request.request_id, [tok], [-0.5] if p.logprobs else None,
                            finished, FinishReason.LENGTH if finished else None,
                            len(seq.request.prompt_token_ids), seq.produced)
        if finished:
            seq.done = True
            self.running.pop(seq.request.request_id, None)
        seq.queue.put_nowait(out)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            while self.waiting and len(self.running) < self.max_batch_size:
                rid, seq = next(iter(self.waiting.items()))
                del self.waiting[rid]
                self.running[rid] = seq
            if not self.running:
                continue
            self.steps += 1
            if self.die_after is not None and self.steps > self.die_after:
                self._fail(RuntimeError("injected engine fault"))
                return
            for seq in list(self.running.values()):
                self._emit(seq)

    def _fail(self, exc: BaseException) -> None:
        self._dead = exc
        for rid, seq in list(self.running.items()) + list(self.waiting.items()):
            seq.done = True
            seq.queue.put_nowait(RequestOutput(rid, finished=True, finish_reason=FinishReason.ERROR,
                                               error=str(exc)))
        self.running.clear()
        self.waiting.clear()
        if self._on_death is not None:
            self._on_death(str(exc))


def fake_model(loop: FakeLoop | None = None) -> ServingModel:
    loop = loop or FakeLoop()
    return ServingModel(name="fake-model", tokenizer=FakeTokenizer(), loop=loop,
                        max_context=loop.max_context, max_batch_size=loop.max_batch_size,
                        max_queue_size=loop.max_queue_size, backend="fake-loop")


def loader_for(model: ServingModel):  # noqa: ANN202
    """An app-factory loader that starts the fake loop and returns the model."""
    async def load(settings: object, metrics: object) -> ServingModel:
        await model.loop.start()
        return model
    return load
