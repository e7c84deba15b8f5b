"""Keyword-default factories and step helpers for the scheduler tests (the executor they drive
is tests/fakes.py's FakeExecutor)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq

import numpy as np
from fakes import VOCAB, FakeExecutor

from scheduler.config import SchedulerConfig
from scheduler.plan import StepPlan, StepResult
from scheduler.request import Request, RequestOutput, SamplingParams
from scheduler.scheduler import Scheduler
from scheduler.sequence import Sequence
from scheduler.step_rows import sample_rows

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


def seq_of(params: SamplingParams, token_ids: Seq[int], num_prompt: int,
           end_ids: Seq[int] = (), rng: np.random.Generator | None = None) -> Sequence:
    """A live sequence of `num_prompt` prompt tokens followed by the rest of token_ids as
    output; end_ids stand for the model's eos ids."""
    request = Request(request_id=f"s{next(_ids)}", prompt_token_ids=list(token_ids[:num_prompt]),
                      params=params, arrival_time=0.0)
    seq = Sequence(next(_ids), request, rng, tuple(end_ids))
    for token in token_ids[num_prompt:]:
        seq.append_token(token, None)
    return seq


def sample_seqs(logits: np.ndarray, seqs: list[Sequence], argmax: np.ndarray | None = None
                ) -> tuple[list[int], list[float | None]]:
    """Tokens and log-probs for hand-built logits rows, one per sequence, chosen the way a
    scheduler step chooses them (step_rows.sample_rows, the production path)."""
    sampled = sample_rows(StepPlan(0, []), StepResult(0, logits, argmax), seqs)
    return sampled.tokens, sampled.logprobs


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
