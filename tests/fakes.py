"""Stand-ins for what the scheduler and server tests do not test: the device with its model, and
the tokenizer. Everything between them is the real code.

`FakeExecutor` keeps a fake KV pool holding the token id written at every slot and fails a step
that reads a slot nobody wrote. Its logits are either a deterministic function of the sequence
content *as read back through the block table* (a wrong block table, a missed copy-on-write or a
bad prefix-cache hit changes the outputs), or, given a `script`, make output position i of every
request prefer script[i] (then FILLER forever) by SCRIPT_MARGIN over a deterministic,
position-dependent noise, so greedy output is the script and the other tokens have distinct
log-probs. Controls a test may need: `step_s` (a slow device: each step sleeps, in the loop's
worker thread) and `fail_at_step` (the device fails from that step on: the engine dies).

`FakeTokenizer` is byte-level: token i < 256 is byte i; 256 = BOS, 257 = EOS, 258 = "<|im_start|>".

`FakeEngine` is an app-factory loader (server.app.Loader) for the server tests: the real EngineLoop
+ Scheduler, configured from the server settings as the real loader does, over a FakeExecutor
that speaks REPLY (or a given script) and the FakeTokenizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np

from scheduler.loop import EngineLoop
from scheduler.plan import StepPlan, StepResult
from scheduler.request import Request
from scheduler.scheduler import Scheduler
from server.metrics.server_metrics import ServerMetrics
from server.app import create_app
from server.model_loader import scheduler_config
from server.serving import ServingModel
from server.settings import ServerSettings

VOCAB = 64  # the hashed model's default vocabulary (the scheduler tests)
BYTE_VOCAB = 259  # the FakeTokenizer's: 256 bytes + BOS, EOS, <|im_start|>
SCRIPT_MARGIN = 10.0
FILLER = ord("x")
BOS, EOS, IM_START = 256, 257, 258
SPECIAL = {IM_START: "<|im_start|>"}
REPLY = "Hi there, 你好 🙂!".encode()
MODEL = "fake-model"
# the server tests' model: 64 KV blocks of 16 tokens, 512 tokens of context at most
SERVER_GEOMETRY: dict[str, int] = {"num_blocks": 64, "block_size": 16, "max_context": 512}


class FakeExecutor:
    def __init__(self, num_blocks: int = 16, block_size: int = 4, vocab_size: int = VOCAB,
                 max_context: int = 256, fail_at_step: int | None = None,
                 with_argmax: bool = False, script: Sequence[int] | None = None,
                 step_s: float = 0.0) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.fail_at_step = fail_at_step
        self.with_argmax = with_argmax  # also return StepResult.argmax, as a device executor does
        self.script = None if script is None else list(script)
        self.step_s = step_s
        self.kv = np.full((num_blocks, block_size), -1, dtype=np.int64)
        self.plans: list[StepPlan] = []
        self.closed = False
        self._prompt_len: dict[int, int] = {}  # seq id -> prompt length (script mode)

    def execute(self, plan: StepPlan) -> StepResult:
        if self.step_s:
            time.sleep(self.step_s)
        if self.fail_at_step is not None and plan.step_id >= self.fail_at_step:
            raise RuntimeError("fake device failure")
        self.plans.append(plan)
        for src, dst in plan.block_copies:
            self.kv[dst] = self.kv[src]
        rows = []
        for s in plan.seqs:
            past = [self._read(s.block_table, p) for p in range(s.start_pos)]
            assert -1 not in past, f"seq {s.seq_id} reads unwritten KV: {past}"
            if s.want_logits:
                rows.append(self._logits(s.seq_id, past + s.token_ids))
        for s in plan.seqs:  # new KV lands after the forward, by slot mapping
            for i, tok in enumerate(s.token_ids):
                pos = s.start_pos + i
                self.kv[s.block_table[pos // self.block_size], pos % self.block_size] = tok
        logits = np.stack(rows) if rows else np.zeros((0, self.vocab_size), np.float32)
        argmax = np.argmax(logits, axis=1) if self.with_argmax else None
        return StepResult(step_id=plan.step_id, logits=logits, argmax=argmax)

    def _logits(self, seq_id: int, context: list[int]) -> np.ndarray:
        if self.script is None:
            return fake_logits(context, self.vocab_size)
        prompt_len = self._prompt_len.setdefault(seq_id, len(context))  # first logits: prompt
        return scripted_logits(self.script, len(context) - prompt_len, self.vocab_size)

    def _read(self, table: list[int], pos: int) -> int:
        return int(self.kv[table[pos // self.block_size], pos % self.block_size])

    def close(self) -> None:
        self.closed = True


def fake_logits(context: Sequence[int], vocab_size: int = VOCAB) -> np.ndarray:
    digest = hashlib.blake2b(np.asarray(context, np.int64).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return (rng.standard_normal(vocab_size) * 3.0).astype(np.float32)


def scripted_logits(script: Sequence[int], pos: int, vocab_size: int) -> np.ndarray:
    """Output position `pos` of a scripted model: script[pos] (or FILLER) leads by the margin."""
    rng = np.random.default_rng(pos)
    row = rng.standard_normal(vocab_size).astype(np.float32)
    row[128:] -= SCRIPT_MARGIN  # alternatives stay ASCII: distinct token strings
    want = script[pos] if pos < len(script) else FILLER
    row[want] = row.max() + SCRIPT_MARGIN
    return row


def scripted_logprob(script: Sequence[int], pos: int, vocab_size: int = BYTE_VOCAB) -> float:
    """The log-prob of the scripted token at output position `pos` (its greedy choice)."""
    row = scripted_logits(script, pos, vocab_size).astype(np.float64)
    want = script[pos] if pos < len(script) else FILLER
    return float(row[want] - row.max() - np.log(np.exp(row - row.max()).sum()))


def greedy_reference(prompt: Sequence[int], n: int, vocab_size: int = VOCAB) -> list[int]:
    """What greedy decoding of the hashed model produces, computed without any scheduler."""
    ctx = list(prompt)
    for _ in range(n):
        ctx.append(int(np.argmax(fake_logits(ctx, vocab_size))))
    return ctx[len(prompt):]


class FakeTokenizer:
    vocab_size = BYTE_VOCAB
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


class FakeEngine:
    """Loads the real EngineLoop + Scheduler (SchedulerConfig from the settings, as the real
    loader builds it) over a FakeExecutor speaking `script` and a FakeTokenizer (or `tokenizer`).
    `executor_options` go to the FakeExecutor (step_s, fail_at_step, geometry). After the load:
    `executor`, `loop`, and `added`, every Request handed to the scheduler, accepted or not."""

    def __init__(self, script: str | bytes | Sequence[int] = REPLY, *,
                 tokenizer: FakeTokenizer | None = None, **executor_options: Any) -> None:
        self.script = list(script.encode() if isinstance(script, str) else script)
        self.tokenizer = tokenizer or FakeTokenizer()
        self.options = {**SERVER_GEOMETRY, **executor_options}
        self.added: list[Request] = []
        self.executor: FakeExecutor | None = None
        self.loop: EngineLoop | None = None

    async def __call__(self, settings: ServerSettings, metrics: ServerMetrics) -> ServingModel:
        tok = self.tokenizer
        self.executor = FakeExecutor(vocab_size=tok.vocab_size, script=self.script,
                                     **self.options)
        cfg = scheduler_config(settings)
        self.loop = EngineLoop(self.executor, cfg, eos_token_ids=tok.eos_token_ids,
                               on_step=metrics.observe_step)
        self._record_adds(self.loop.scheduler)
        await self.loop.start()
        return ServingModel(name=MODEL, tokenizer=tok, loop=self.loop,
                            max_context=cfg.resolve_max_model_len(self.executor.max_context),
                            max_batch_size=cfg.max_batch_size,
                            max_queue_size=cfg.max_queue_size, backend="fake-executor",
                            close=self.executor.close)

    def _record_adds(self, scheduler: Scheduler) -> None:
        """Spy on the real Scheduler.add: note each request, then let the scheduler decide."""
        real_add = scheduler.add

        def add(request: Request) -> None:
            self.added.append(request)
            real_add(request)

        scheduler.add = add  # type: ignore[method-assign]


@asynccontextmanager
async def serving(loader: FakeEngine, **settings: Any
                  ) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real app over what `loader` loads, lifespan running and ready, and an async client to
    it (requests in several tasks at once run concurrently)."""
    app = create_app(ServerSettings(**{"model": MODEL, **settings}), loader)
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    try:
        while (await client.get("/v2/health/ready")).status_code != 200:
            await asyncio.sleep(0.01)
        yield app, client
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
