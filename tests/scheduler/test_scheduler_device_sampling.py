"""An executor that samples on the device (`samples_on_device`): plans say per logits row whether
the host needs the row (`host_logits`) and which ids the device argmax skips (`banned`); the
executor returns every row's token id and only the host rows' logits (`logits_rows`). The
request streams must equal those of an executor that returns every row."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeExecutor
from sched_fakes import make_request, make_scheduler, run_all, tokens_of

from scheduler.plan import ScheduledSeq, StepPlan, StepResult
from scheduler.scheduler import Scheduler
from scheduler.step_rows import MAX_DEVICE_BANS, sample_rows


class DeviceSamplingExecutor(FakeExecutor):
    """FakeExecutor whose argmax skips each row's bans and whose logits hold only host rows."""

    samples_on_device = True

    def __init__(self) -> None:
        super().__init__(num_blocks=64)
        self.host_rows_seen = 0
        self.device_rows_seen = 0

    def execute(self, plan: StepPlan) -> StepResult:
        full = super().execute(plan).logits
        wanted = [s for s in plan.seqs if s.want_logits]
        picks = []
        for row, s in zip(full, wanted, strict=True):
            masked = row.copy()
            masked[[b for b in s.banned if b < len(row)]] = -np.inf
            picks.append(int(np.argmax(masked)))
        host = np.array([i for i, s in enumerate(wanted) if s.host_logits], dtype=np.int64)
        self.host_rows_seen += len(host)
        self.device_rows_seen += len(wanted) - len(host)
        return StepResult(plan.step_id, full[host], np.array(picks, dtype=np.int64),
                          logits_rows=host)


def _requests() -> list[dict[str, object]]:
    return [dict(max_tokens=6),  # plain greedy
            dict(max_tokens=6, min_tokens=5),  # greedy, end ids banned on the device
            dict(max_tokens=6, bad_words_ids=[[5], [1, 9]]),  # greedy, bad words on the device
            dict(max_tokens=6, repetition_penalty=1.5),  # penalised: host row
            dict(max_tokens=6, temperature=0.8, top_p=0.9, seed=7),  # sampled: host row
            dict(max_tokens=6, logprobs=True, top_logprobs=2)]  # log-probs: host row


def _run(executor: FakeExecutor, device: bool) -> dict[str, tuple[list[int], list[float]]]:
    base = make_scheduler(executor, eos=(3,), max_batch_size=8)
    sched = Scheduler(base.config, block_size=executor.block_size,
                      num_blocks=executor.num_blocks, vocab_size=executor.vocab_size,
                      max_context=executor.max_context, eos_token_ids=(3,),
                      device_sampling=device)
    for i, params in enumerate(_requests()):
        sched.add(make_request(5 + i, request_id=f"q{i}", **params))
    got = run_all(sched, executor)
    return {rid: (tokens_of(outs), [lp for o in outs for lp in (o.new_logprobs or [])])
            for rid, outs in got.items()}


def test_device_sampling_streams_equal_the_host_path() -> None:
    device = DeviceSamplingExecutor()
    want = _run(FakeExecutor(num_blocks=64), device=False)
    got = _run(device, device=True)
    assert got == want
    assert device.device_rows_seen > 0 and device.host_rows_seen > 0


def test_rows_say_what_the_host_needs() -> None:
    ex = DeviceSamplingExecutor()
    sched = Scheduler(make_scheduler(ex).config, block_size=ex.block_size,
                      num_blocks=ex.num_blocks, vocab_size=ex.vocab_size,
                      max_context=ex.max_context, eos_token_ids=(3, 4), device_sampling=True)
    for i, params in enumerate(_requests()[:5]):
        sched.add(make_request(4, request_id=f"q{i}", **params))
    plan = sched.schedule()
    assert plan is not None
    rows = {r.seq_id: (r.host_logits, r.banned) for r in plan.seqs}
    assert list(rows.values()) == [(False, ()), (False, (3, 4)), (False, (5,)), (True, ()),
                                   (True, ())]


def test_too_many_bans_take_the_host_path() -> None:
    ex = DeviceSamplingExecutor()
    sched = Scheduler(make_scheduler(ex).config, block_size=ex.block_size,
                      num_blocks=ex.num_blocks, vocab_size=ex.vocab_size,
                      max_context=ex.max_context, device_sampling=True)
    words = [[i] for i in range(MAX_DEVICE_BANS + 1)]
    sched.add(make_request(4, bad_words_ids=words))
    plan = sched.schedule()
    assert plan is not None and plan.seqs[0].host_logits and plan.seqs[0].banned == ()


def test_a_device_result_that_does_not_match_the_plan_is_refused() -> None:
    plan = StepPlan(1, [ScheduledSeq(0, [1], 0, [0], True)])
    seqs = list(make_scheduler().admission.running)  # no sequences: only the shape check matters
    bad = StepResult(1, np.zeros((1, 8), np.float32), None, logits_rows=np.array([0]))
    with pytest.raises(ValueError, match="does not match"):
        sample_rows(plan, bad, seqs)
