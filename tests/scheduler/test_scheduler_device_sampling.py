"""An executor that samples on the device (`samples_on_device`): plans say per logits row whether
the host needs the row (`host_logits`) and which ids the device argmax skips (`banned`); the
executor returns every row's token id and only the host rows' logits (`logits_rows`). The
request streams must equal those of an executor that returns every row."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeExecutor
from sched_fakes import make_request, make_scheduler, run_all, tokens_of

from scheduler import step_rows
from scheduler.plan import DeviceDraw, ScheduledSeq, StepPlan, StepResult
from scheduler.sampling import host_draw
from scheduler.scheduler import Scheduler
from scheduler.step_rows import MAX_DEVICE_BANS, sample_rows


class DeviceSamplingExecutor(FakeExecutor):
    """FakeExecutor whose argmax skips each row's bans and whose logits hold only host rows."""

    samples_on_device = True

    def __init__(self) -> None:
        super().__init__(num_blocks=64)
        self.host_rows_seen = 0
        self.device_rows_seen = 0
        self.draws_seen: list[DeviceDraw] = []

    def execute(self, plan: StepPlan) -> StepResult:
        full = super().execute(plan).logits
        wanted = [s for s in plan.seqs if s.want_logits]
        picks, logprobs = [], np.full(len(wanted), np.nan)
        for i, (row, s) in enumerate(zip(full, wanted, strict=True)):
            if s.draw is not None:
                token, lp = host_draw(row, s.draw)
                picks.append(token)
                logprobs[i] = np.nan if lp is None else lp
                self.draws_seen.append(s.draw)
                continue
            masked = row.copy()
            masked[[b for b in s.banned if b < len(row)]] = -np.inf
            picks.append(int(np.argmax(masked)))
        host = np.array([i for i, s in enumerate(wanted) if s.host_logits], dtype=np.int64)
        self.host_rows_seen += len(host)
        self.device_rows_seen += len(wanted) - len(host)
        return StepResult(plan.step_id, full[host], np.array(picks, dtype=np.int64),
                          logits_rows=host, logprobs=logprobs)


def _requests() -> list[dict[str, object]]:
    return [dict(max_tokens=6),  # plain greedy
            dict(max_tokens=6, min_tokens=5),  # greedy, end ids banned on the device
            dict(max_tokens=6, bad_words_ids=[[5], [1, 9]]),  # greedy, bad words on the device
            dict(max_tokens=6, repetition_penalty=1.5),  # penalised greedy: a device draw
            dict(max_tokens=6, temperature=0.8, top_p=0.9, seed=7),  # sampled: a device draw
            dict(max_tokens=6, logprobs=True, top_logprobs=2),  # top log-probs: host row
            dict(max_tokens=6, logprobs=True),  # greedy log-probs: a device draw
            dict(max_tokens=6, temperature=1.3, top_k=9, top_p=0.8, min_p=0.05, seed=3,
                 presence_penalty=0.5, frequency_penalty=-0.25, repetition_penalty=0.7,
                 min_tokens=4, bad_words_ids=[[2], [7, 8]], logprobs=True)]  # every edit


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
    assert {d.temperature > 0 for d in device.draws_seen} == {True, False}
    assert any(d.logprob for d in device.draws_seen)
    assert {d.repetition_penalty for d in device.draws_seen} == {1.0, 1.5, 0.7}
    assert any(d.bans and d.presence_penalty for d in device.draws_seen)


def test_rows_say_what_the_host_needs() -> None:
    ex = DeviceSamplingExecutor()
    sched = Scheduler(make_scheduler(ex).config, block_size=ex.block_size,
                      num_blocks=ex.num_blocks, vocab_size=ex.vocab_size,
                      max_context=ex.max_context, eos_token_ids=(3, 4), device_sampling=True)
    sched.add(make_request(4, request_id="plain-again", max_tokens=6))
    for i, params in enumerate(_requests()):
        sched.add(make_request(4, request_id=f"q{i}", **params))
    plan = sched.schedule()
    assert plan is not None
    rows = {r.seq_id: (r.host_logits, r.banned) for r in plan.seqs}
    assert list(rows.values()) == [(False, ())] * 2 + [(False, (3, 4)), (False, (5,))] + [
        (False, ())] * 2 + [(True, ())] + [(False, ())] * 2
    draws = [r.draw for r in plan.seqs]
    assert draws[:4] == [None] * 4 and draws[6] is None
    penalised, sampled, logprob, every = draws[4], draws[5], draws[7], draws[8]
    assert penalised is not None and penalised.temperature == 0.0 and penalised.u == 0.0
    prompt = sorted(set(plan.seqs[4].token_ids))  # prefill: the whole prompt
    assert sorted(set(penalised.history)) == prompt and penalised.repetition_penalty == 1.5
    assert penalised.num_prompt == len(plan.seqs[4].token_ids) and penalised.bans == ()
    assert sampled is not None and sampled.temperature == 0.8 and 0.0 < sampled.u < 1.0
    assert sampled.top_p == 0.9 and sampled.history == () and not sampled.logprob
    assert logprob is not None and logprob.logprob and logprob.history == ()
    assert every is not None and every.top_k == 9 and every.min_p == 0.05
    assert every.bans == (2, 3, 4)  # the one-token bad word, the end ids before min_tokens
    assert (every.presence_penalty, every.frequency_penalty) == (0.5, -0.25)


def test_too_many_bans_take_a_draw_too_many_the_host_path_as_long_penalised_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_rows, "MAX_DRAW_BANS", MAX_DEVICE_BANS + 1)  # vocab 64
    monkeypatch.setattr(step_rows, "MAX_DEVICE_HISTORY", 5)
    ex = DeviceSamplingExecutor()
    sched = Scheduler(make_scheduler(ex).config, block_size=ex.block_size,
                      num_blocks=ex.num_blocks, vocab_size=ex.vocab_size,
                      max_context=ex.max_context, device_sampling=True)
    words = [[i] for i in range(MAX_DEVICE_BANS + 1)]
    sched.add(make_request(4, bad_words_ids=words))  # too many bans for argmax: a draw
    sched.add(make_request(4, bad_words_ids=[[i] for i in range(MAX_DEVICE_BANS + 2)]))
    sched.add(make_request(5, repetition_penalty=1.2))  # penalised, history 5: a draw
    sched.add(make_request(6, presence_penalty=0.5))  # history 6 > 5: the host
    plan = sched.schedule()
    assert plan is not None
    wide, too_wide, short, long = plan.seqs
    assert short.draw is not None and len(short.draw.history) == 5 and not short.host_logits
    assert long.draw is None and long.host_logits
    assert not wide.host_logits and wide.banned == () and wide.draw is not None
    assert wide.draw.bans == tuple(range(MAX_DEVICE_BANS + 1)) and wide.draw.temperature == 0
    assert too_wide.host_logits and too_wide.draw is None


def test_a_device_result_that_does_not_match_the_plan_is_refused() -> None:
    plan = StepPlan(1, [ScheduledSeq(0, [1], 0, [0], True)])
    seqs = list(make_scheduler().admission.running)  # no sequences: only the shape check matters
    bad = StepResult(1, np.zeros((1, 8), np.float32), None, logits_rows=np.array([0]))
    with pytest.raises(ValueError, match="does not match"):
        sample_rows(plan, bad, seqs)
