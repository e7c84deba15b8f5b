"""Hot-path shortcuts: executor argmax for plain-greedy rows, shared block tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request, make_scheduler, run_all, sample_seqs, seq_of, tokens_of

from scheduler.plan import StepResult
from scheduler.request import SamplingParams


def test_executor_argmax_used_only_for_plain_greedy_rows() -> None:
    """A deliberately different executor argmax is taken for plain-greedy rows and ignored for
    rows whose processing can move the argmax (penalty, min_tokens) or that sample."""
    logits = np.tile(np.array([0, 9, 1, 8], np.float32), (4, 1))
    fake_argmax = np.array([3, 3, 3, 3], np.int64)
    rows = [seq_of(SamplingParams(), [0], 1),
            seq_of(SamplingParams(repetition_penalty=2.0), [1], 0),
            seq_of(SamplingParams(min_tokens=2), [0], 1, (1,)),
            seq_of(SamplingParams(temperature=1.0, top_k=1), [0], 1, (), np.random.default_rng(0))]
    tokens, _ = sample_seqs(logits, rows, fake_argmax)
    assert tokens == [3, 3, 3, 1]
    assert sample_seqs(logits, rows)[0] == [1, 3, 3, 1]


def test_executor_argmax_logprobs_are_raw() -> None:
    """With executor argmax, log-probs are still log_softmax of the raw row at the token."""
    raw = np.array([[1.0, 2.0, 3.0]], np.float32)
    p = SamplingParams(logprobs=True)
    tokens, lps = sample_seqs(raw, [seq_of(p, [0], 1)], np.array([2]))
    expect = 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert tokens == [2] and lps[0] == pytest.approx(expect, abs=1e-6)


def test_scheduler_same_tokens_with_and_without_executor_argmax() -> None:
    """Greedy, penalized and seeded requests produce identical streams whether or not the
    executor returns argmax."""
    def run(with_argmax: bool) -> dict[str, list[int]]:
        ex = FakeExecutor(num_blocks=32, with_argmax=with_argmax)
        sched = make_scheduler(ex, eos=(5,))
        sched.add(make_request(6, request_id="g", max_tokens=9))
        sched.add(make_request(7, request_id="p", max_tokens=9, repetition_penalty=1.5))
        sched.add(make_request(5, request_id="m", max_tokens=9, min_tokens=4))
        sched.add(make_request(8, request_id="s", max_tokens=9, temperature=1.0, seed=3))
        return {k: tokens_of(v) for k, v in run_all(sched, ex).items()}
    with_argmax = run(True)
    assert with_argmax == run(False)
    assert with_argmax["g"] == greedy_reference([(7 * i + 3) % 64 for i in range(6)], 9)


def test_executor_argmax_shape_checked() -> None:
    """An argmax array that does not match the logits rows is refused."""
    ex = FakeExecutor()
    sched = make_scheduler(ex)
    sched.add(make_request(4))
    plan = sched.schedule()
    assert plan is not None
    result = ex.execute(plan)
    with pytest.raises(ValueError, match="argmax"):
        sched.update(plan, StepResult(plan.step_id, result.logits, np.zeros(3, np.int64)))


def test_plan_rows_share_the_sequence_block_table() -> None:
    """Plan rows carry the sequence's own block table (no per-step copy), and a decode only
    takes a new block when it crosses a block boundary."""
    ex = FakeExecutor(num_blocks=16, block_size=4)
    sched = make_scheduler(ex)
    sched.add(make_request(3, request_id="a", max_tokens=8))
    used = []
    for _ in range(6):
        plan = sched.schedule()
        assert plan is not None
        assert plan.seqs[0].block_table is sched.admission.running[0].block_table
        used.append(sched.allocator.num_used)
        sched.update(plan, ex.execute(plan))
    # prompt 3 tokens -> 1 block; positions 3 (block 0), 4..7 (block 1), 8 (block 2)
    assert used == [1, 1, 2, 2, 2, 2]


def test_scheduler_counts_sampled_rows() -> None:
    """SampleStats counts every sampled row (greedy rows are not sampled)."""
    ex = FakeExecutor(num_blocks=32)
    sched = make_scheduler(ex)
    sched.add(make_request(5, request_id="s", max_tokens=3, temperature=1.0, top_p=0.9, seed=1))
    sched.add(make_request(5, request_id="g", max_tokens=3))
    run_all(sched, ex)
    assert sched.sample_stats.sampled_rows == 3
    assert 0 <= sched.sample_stats.full_sort_rows <= 3
