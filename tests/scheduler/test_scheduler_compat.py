"""Issue 10 in the scheduler: end ids past the vocabulary, top log-probs, idle step counts."""

from __future__ import annotations

import asyncio

import numpy as np
from fakes import VOCAB, FakeExecutor, fake_logits
from sched_fakes import make_request, make_scheduler, run_all, tokens_of

from scheduler.config import SchedulerConfig
from scheduler.loop import EngineLoop
from scheduler.request import FinishReason
from scheduler.stats import SchedulerStats


def test_end_id_past_vocab_never_stops_and_min_tokens_works() -> None:
    """end_id >= vocab: accepted, never produced, so the request runs to max_tokens; the
    min_tokens ban of end ids (which indexes the logits row) must not fail on it."""
    ex = FakeExecutor(num_blocks=64)
    sched = make_scheduler(ex, eos=(int(np.argmax(fake_logits([1, 2, 3]))),))
    sched.add(make_request([1, 2, 3], request_id="r", max_tokens=20, min_tokens=20,
                           end_ids=(1048576,)))
    outs = run_all(sched, ex)["r"]
    assert len(tokens_of(outs)) == 20
    assert outs[-1].finish_reason is FinishReason.LENGTH


def _reference_top(context: list[int], k: int) -> list[tuple[int, float]]:
    x = fake_logits(context).astype(np.float64)
    lp = x - x.max() - np.log(np.exp(x - x.max()).sum())
    order = sorted(range(VOCAB), key=lambda i: (-lp[i], i))[:k]
    return [(i, float(lp[i])) for i in order]


def test_top_logprobs_per_token_match_reference_and_chosen() -> None:
    """Each output token gets its position's k most likely tokens with raw log-probs; the
    greedy choice is the first of them and its log-prob equals the reported one."""
    ex = FakeExecutor(num_blocks=64)
    sched = make_scheduler(ex)
    prompt = [5, 6, 7]
    sched.add(make_request(prompt, request_id="t", max_tokens=6, logprobs=True, top_logprobs=3))
    sched.add(make_request(prompt, request_id="plain", max_tokens=6, logprobs=True))
    got = run_all(sched, ex)
    outs = got["t"]
    tokens = tokens_of(outs)
    tops = [t for o in outs for t in (o.new_top_logprobs or [])]
    lps = [lp for o in outs for lp in (o.new_logprobs or [])]
    assert len(tops) == len(tokens) == 6
    for pos, (tok, top, lp) in enumerate(zip(tokens, tops, lps, strict=True)):
        ref = _reference_top(prompt + tokens[:pos], 3)
        assert [t for t, _ in top] == [t for t, _ in ref]
        assert np.allclose([v for _, v in top], [v for _, v in ref], atol=1e-9)
        assert top[0][0] == tok and top[0][1] == lp
    assert all(o.new_top_logprobs is None for o in got["plain"])


def test_top_logprobs_helper_orders_ties_by_id() -> None:
    from scheduler.sampling import top_logprobs  # here: the module collects on older commits

    row = np.array([1.0, 3.0, 3.0, -1.0], dtype=np.float32)
    top = top_logprobs(row, 3)
    assert [t for t, _ in top] == [1, 2, 0]
    assert top[0][1] == top[1][1] > top[2][1]
    assert len(top_logprobs(row, 10)) == 4


def test_idle_loop_reports_nothing_scheduled() -> None:
    """After the last request finished, stats() and the last on_step snapshot say that no
    request and no token is scheduled (the `scheduled`/`generation_requests` gauges read 0)."""
    async def main() -> tuple[list[SchedulerStats], SchedulerStats]:
        ex = FakeExecutor(num_blocks=64)
        seen: list[SchedulerStats] = []
        loop = EngineLoop(ex, SchedulerConfig(), eos_token_ids=(),
                          on_step=seen.append)
        await loop.start()
        async for _ in loop.add(make_request(4, max_tokens=5)):
            pass
        for _ in range(100):
            await asyncio.sleep(0.01)
            if seen and seen[-1].num_generation_requests == 0:
                break
        stats = loop.stats()
        await loop.stop()
        return seen, stats

    seen, stats = asyncio.run(asyncio.wait_for(main(), 30))
    assert any(s.num_generation_requests == 1 for s in seen)  # a decode step was reported
    for snap in (seen[-1], stats):
        assert snap.num_context_requests == snap.num_generation_requests == 0
        assert snap.num_scheduled_tokens == 0 and snap.num_running == 0
