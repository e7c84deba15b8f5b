"""Test doubles and keyword-default factories for the scheduler tests.

`FakeExecutor` keeps a fake KV pool holding the token id written at every slot, so logits are a
deterministic function of the sequence content *as read back through the block table*: a wrong
block table, a missed copy-on-write or a bad prefix-cache hit changes the outputs.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence as Seq

import numpy as np

from scheduler.config import SchedulerConfig
from scheduler.plan import StepPlan, StepResult
from scheduler.request import Request, RequestOutput, SamplingParams
from scheduler.scheduler import Scheduler

VOCAB = 64


class FakeExecutor:
    def __init__(self, num_blocks: int = 16, block_size: int = 4, vocab_size: int = VOCAB,
                 max_context: int = 256, fail_at_step: int | None = None,
                 with_argmax: bool = False) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.fail_at_step = fail_at_step
        self.with_argmax = with_argmax  # also return StepResult.argmax, as a device executor does
        self.kv = np.full((num_blocks, block_size), -1, dtype=np.int64)
        self.plans: list[StepPlan] = []
        self.closed = False

    def execute(self, plan: StepPlan) -> StepResult:
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
                rows.append(fake_logits(past + s.token_ids, self.vocab_size))
        for s in plan.seqs:  # new KV lands after the forward, by slot mapping
            for i, tok in enumerate(s.token_ids):
                pos = s.start_pos + i
                self.kv[s.block_table[pos // self.block_size], pos % self.block_size] = tok
        logits = np.stack(rows) if rows else np.zeros((0, self.vocab_size), np.float32)
        argmax = np.argmax(logits, axis=1) if self.with_argmax else None
        return StepResult(step_id=plan.step_id, logits=logits, argmax=argmax)

    def _read(self, table: list[int], pos: int) -> int:
        return int(self.kv[table[pos // self.block_size], pos % self.block_size])

    def close(self) -> None:
        self.closed = True


def fake_logits(context: Seq[int], vocab_size: int = VOCAB) -> np.ndarray:
    digest = hashlib.blake2b(np.asarray(context, np.int64).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return (rng.standard_normal(vocab_size) * 3.0).astype(np.float32)


def greedy_reference(prompt: Seq[int], n: int, vocab_size: int = VOCAB) -> list[int]:
    """What greedy decoding of the fake model produces, computed without any scheduler."""
    ctx = list(prompt)
    for _ in range(n):
        ctx.append(int(np.argmax(fake_logits(ctx, vocab_size))))
    return ctx[len(prompt):]


_ids = itertools.count()


def make_request(prompt: Seq[int] | int = 6, request_id: str | None = None,
                 deadline: float | None = None, salt: str = "", **params: object) -> Request:
    """A request; an int prompt means that many deterministic pseudo-random tokens."""
    if isinstance(prompt, int):
        prompt = [(7 * i + 3) % VOCAB for i in range(prompt)]
    params.setdefault("max_tokens", 4)
    return Request(request_id=request_id or f"r{next(_ids)}", prompt_token_ids=list(prompt),
                   params=SamplingParams(**params), arrival_time=0.0,  # type: ignore[arg-type]
                   queue_deadline=deadline, cache_salt=salt)


def make_scheduler(executor: FakeExecutor | None = None, *, eos: Seq[int] = (),
                   clock: object = None, **config: object) -> Scheduler:
    ex = executor or FakeExecutor()
    kwargs = {"clock": clock} if clock is not None else {}
    return Scheduler(SchedulerConfig(**config), block_size=ex.block_size,  # type: ignore[arg-type]
                     num_blocks=ex.num_blocks, vocab_size=ex.vocab_size,
                     max_context=ex.max_context, eos_token_ids=eos,  # type: ignore[arg-type]
                     **kwargs)


def step(sched: Scheduler, ex: FakeExecutor) -> list[RequestOutput]:
    """One schedule/execute/update round; checks integrity afterwards."""
    plan = sched.schedule()
    if plan is None:
        outs = sched.drain_outputs()
    else:
        outs = sched.update(plan, ex.execute(plan))
    sched.check_integrity()
    return outs


def run_all(sched: Scheduler, ex: FakeExecutor,
            max_steps: int = 1000) -> dict[str, list[RequestOutput]]:
    """Step until nothing is left; return every output per request id."""
    got: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not sched.has_work():
            break
        for out in step(sched, ex):
            got.setdefault(out.request_id, []).append(out)
    assert not sched.has_work(), "did not finish"
    return got


def tokens_of(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]
