"""Scheduler: admission, chunked prefill, batch cap, preemption, policies, queue, aborts,
finish reasons."""

from __future__ import annotations

import pytest
from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request, make_scheduler, run_all, step, tokens_of

from scheduler.request import ErrorKind, FinishReason, QueueFullError, RequestError
from scheduler.sequence import SeqStatus


def test_admission_is_fcfs_and_capped_by_batch_size() -> None:
    """Waiting requests are admitted in arrival order, at most max_batch_size at once."""
    ex = FakeExecutor(num_blocks=32)
    sched = make_scheduler(ex, max_batch_size=2)
    reqs = [make_request(4, request_id=f"q{i}") for i in range(3)]
    for r in reqs:
        sched.add(r)
    plan = sched.schedule()
    assert plan is not None
    assert [s.seq_id for s in plan.seqs] == [0, 1]
    assert [s.request_id for s in sched.admission.running] == ["q0", "q1"]
    assert [s.request_id for s in sched.admission.waiting] == ["q2"]
    sched.update(plan, ex.execute(plan))


def test_chunked_prefill_under_token_budget() -> None:
    """A 10-token prompt with budget 4 prefills in chunks 4, 4, 2; only the last wants logits."""
    ex = FakeExecutor()
    sched = make_scheduler(ex, max_num_tokens=4, enable_prefix_caching=False)
    sched.add(make_request(10, max_tokens=3))
    chunks = []
    for _ in range(3):
        plan = sched.schedule()
        assert plan is not None
        (s,) = plan.seqs
        chunks.append((s.start_pos, len(s.token_ids), s.want_logits))
        outs = sched.update(plan, ex.execute(plan))
    assert chunks == [(0, 4, False), (4, 4, False), (8, 2, True)]
    expect = greedy_reference(make_request(10).prompt_token_ids, 1)
    assert len(outs) == 1 and outs[0].new_token_ids == expect


def test_decode_goes_before_admission_and_shares_budget() -> None:
    """Running decodes are scheduled first; a new prompt gets what budget is left."""
    ex = FakeExecutor(num_blocks=32)
    sched = make_scheduler(ex, max_num_tokens=5)
    sched.add(make_request(3, request_id="a", max_tokens=8))
    step(sched, ex)
    sched.add(make_request(9, request_id="b"))
    plan = sched.schedule()
    assert plan is not None
    assert [(len(s.token_ids), s.want_logits) for s in plan.seqs] == [(1, True), (4, False)]
    sched.update(plan, ex.execute(plan))


def test_greedy_outputs_match_reference_solo_and_batched() -> None:
    """Batching and chunking never change greedy tokens (fake model reads KV via block tables)."""
    prompts = [make_request(n, max_tokens=6) for n in (3, 9, 17, 5, 12)]
    ex = FakeExecutor(num_blocks=64)
    sched = make_scheduler(ex, max_num_tokens=8)
    for r in prompts:
        sched.add(r)
    got = run_all(sched, ex)
    for r in prompts:
        assert tokens_of(got[r.request_id]) == greedy_reference(r.prompt_token_ids, 6)


def test_preemption_recompute_same_output_and_resumes() -> None:
    """Out of blocks, the newest running request is preempted to the FRONT of the queue, its
    blocks freed; it resumes later and its tokens equal an unpreempted run."""
    ex = FakeExecutor(num_blocks=6, block_size=4)
    sched = make_scheduler(ex, enable_prefix_caching=False)
    a = make_request(7, request_id="a", max_tokens=10)
    b = make_request(7, request_id="b", max_tokens=10)
    sched.add(a)
    sched.add(b)
    got: dict[str, list] = {}
    preempted_seen = False
    for _ in range(200):
        if not sched.has_work():
            break
        for o in step(sched, ex):
            got.setdefault(o.request_id, []).append(o)
        waiting = sched.admission.waiting
        if waiting and waiting[0].status == SeqStatus.PREEMPTED:
            preempted_seen = True
            assert waiting[0].request_id == "b" and waiting[0].block_table == []
    assert preempted_seen and sched.admission.preemptions_total >= 1
    for r in (a, b):
        assert tokens_of(got[r.request_id]) == greedy_reference(r.prompt_token_ids, 10)
        assert got[r.request_id][-1].finish_reason == FinishReason.LENGTH
    assert sched.allocator.num_free == 6


def test_guaranteed_no_evict_never_preempts() -> None:
    """With guaranteed_no_evict the second request waits until the first one's reservation is
    released; there are no preemptions and outputs are unchanged."""
    ex = FakeExecutor(num_blocks=6, block_size=4)
    sched = make_scheduler(ex, policy="guaranteed_no_evict", enable_prefix_caching=False)
    a = make_request(7, request_id="a", max_tokens=10)
    b = make_request(7, request_id="b", max_tokens=10)
    sched.add(a)
    sched.add(b)
    first = step(sched, ex)
    assert [s.request_id for s in sched.admission.running] == ["a"]
    got = run_all(sched, ex)
    assert sched.admission.preemptions_total == 0
    for r in (a, b):
        outs = [o for o in first if o.request_id == r.request_id] + got[r.request_id]
        assert tokens_of(outs) == greedy_reference(r.prompt_token_ids, 10)


def test_queue_full_refused_at_once() -> None:
    """Beyond max_queue_size waiting requests, add raises QueueFullError; nothing is queued."""
    sched = make_scheduler(max_queue_size=2)
    sched.add(make_request())
    sched.add(make_request())
    with pytest.raises(QueueFullError, match="2 requests"):
        sched.add(make_request(request_id="late"))
    assert len(sched.admission.waiting) == 2 and "late" not in sched.request_ids()


def test_queue_timeout_finishes_without_kv() -> None:
    """A request still waiting past its deadline finishes with a QueueTimeoutError output and
    never gets blocks; admitted requests are unaffected by their deadline."""
    now = [0.0]
    ex = FakeExecutor(num_blocks=32)
    sched = make_scheduler(ex, clock=lambda: now[0], max_batch_size=1)
    sched.add(make_request(4, request_id="first", deadline=1.0, max_tokens=3))
    sched.add(make_request(4, request_id="second", deadline=1.0))
    step(sched, ex)
    now[0] = 2.0
    outs = step(sched, ex)
    timed_out = [o for o in outs if o.request_id == "second"]
    assert len(timed_out) == 1
    o = timed_out[0]
    assert (o.finished, o.finish_reason, o.error_type, o.new_token_ids) == (
        True, FinishReason.ERROR, ErrorKind.QUEUE_TIMEOUT, [])
    assert o.error == "queue timeout: second waited in the queue past its deadline"
    got = run_all(sched, ex)
    assert got["first"][-1].finish_reason == FinishReason.LENGTH
    assert ex.plans and all(s.seq_id == 0 for p in ex.plans for s in p.seqs)


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding", "preempted", "finished",
                                   "unknown"])
def test_abort_in_every_state_frees_exactly_once(state: str) -> None:
    """abort() finishes with ABORT once, frees every block, and is idempotent."""
    ex = FakeExecutor(num_blocks=6, block_size=4)
    sched = make_scheduler(ex, max_num_tokens=4, enable_prefix_caching=False)
    sched.add(make_request(7, request_id="a", max_tokens=10))
    target = "a"
    if state == "prefilling":
        step(sched, ex)
        assert sched.admission.running[0].num_computed_tokens == 4
    elif state == "decoding":
        step(sched, ex), step(sched, ex)
        assert sched.admission.running[0].num_output_tokens == 1
    elif state == "preempted":
        sched.add(make_request(7, request_id="b", max_tokens=10))
        waiting = sched.admission.waiting
        while not (waiting and waiting[0].status == SeqStatus.PREEMPTED):
            step(sched, ex)
        target = waiting[0].request_id
    elif state == "finished":
        run_all(sched, ex)
    elif state == "unknown":
        target = "nope"
    out = sched.abort(target)
    if state in ("finished", "unknown"):
        assert out is None
    else:
        assert out is not None and out.finished and out.finish_reason == FinishReason.ABORT
    assert sched.abort(target) is None
    sched.check_integrity()
    run_all(sched, ex)
    assert sched.allocator.num_free == 6


def test_abort_between_schedule_and_update_skips_row() -> None:
    """A request aborted while its step executes is ignored by update (no token, no crash)."""
    ex = FakeExecutor()
    sched = make_scheduler(ex)
    sched.add(make_request(4, request_id="a"))
    sched.add(make_request(5, request_id="b"))
    plan = sched.schedule()
    assert plan is not None
    sched.abort("a")
    outs = sched.update(plan, ex.execute(plan))
    assert [o.request_id for o in outs] == ["b"]
    sched.check_integrity()


def test_finish_reasons_length_end_id_and_ignore_eos() -> None:
    """LENGTH at max_tokens; END_ID on an end id (token included); ignore_eos keeps going;
    min_tokens suppresses end ids until reached."""
    prompt = make_request(5).prompt_token_ids
    ref = greedy_reference(prompt, 6)
    end = ref[2]
    assert end not in ref[:2]
    ex = FakeExecutor()
    sched = make_scheduler(ex)
    sched.add(make_request(prompt, request_id="len", max_tokens=6))
    sched.add(make_request(prompt, request_id="end", max_tokens=6, end_ids=(end,)))
    sched.add(make_request(prompt, request_id="eos", max_tokens=6))
    sched.add(make_request(prompt, request_id="ign", max_tokens=6, end_ids=(end,), ignore_eos=True))
    got = run_all(sched, ex)
    assert (tokens_of(got["len"]), got["len"][-1].finish_reason) == (ref, FinishReason.LENGTH)
    assert (tokens_of(got["end"]), got["end"][-1].finish_reason) == (ref[:3], FinishReason.END_ID)
    assert tokens_of(got["ign"]) == ref
    ex2 = FakeExecutor()
    sched2 = make_scheduler(ex2, eos=(end,))
    sched2.add(make_request(prompt, request_id="eos", max_tokens=6))
    sched2.add(make_request(prompt, request_id="min", max_tokens=6, min_tokens=4))
    got2 = run_all(sched2, ex2)
    assert tokens_of(got2["eos"]) == ref[:3]
    assert got2["eos"][-1].finish_reason == FinishReason.END_ID
    min_toks = tokens_of(got2["min"])
    assert min_toks[:2] == ref[:2] and min_toks[2] != end and end not in min_toks[:4]


def test_requests_that_can_never_fit_are_refused() -> None:
    """prompt + max_tokens beyond the KV capacity or max_model_len -> RequestError at add."""
    sched = make_scheduler(FakeExecutor(num_blocks=4, block_size=4), max_model_len=100)
    with pytest.raises(RequestError, match="whole cache holds 16"):
        sched.add(make_request(10, max_tokens=8))
    with pytest.raises(RequestError, match="maximum model length 100"):
        make_scheduler(FakeExecutor(num_blocks=64), max_model_len=100).add(
            make_request(90, max_tokens=11))
    with pytest.raises(RequestError, match="prompt must not be empty"):
        sched.add(make_request([]))
    with pytest.raises(RequestError, match="prompt_token_ids=64"):
        sched.add(make_request([1, 64]))
    sched.add(make_request(10, request_id="dup", max_tokens=7))
    with pytest.raises(RequestError, match="already in flight"):
        sched.add(make_request(3, request_id="dup"))


def test_stats_snapshot_counts() -> None:
    """stats() reports running/waiting, step token counts and block usage exactly."""
    ex = FakeExecutor(num_blocks=16)
    sched = make_scheduler(ex, max_batch_size=1)
    sched.add(make_request(6))
    sched.add(make_request(3))
    step(sched, ex)
    st = sched.stats(0.5)
    assert (st.step_id, st.num_running, st.num_waiting, st.num_context_requests,
            st.num_generation_requests, st.num_scheduled_tokens, st.blocks_used,
            st.blocks_free, st.step_time_s) == (1, 1, 1, 1, 0, 6, 2, 14, 0.5)
    step(sched, ex)
    st = sched.stats()
    counts = (st.num_context_requests, st.num_generation_requests, st.num_scheduled_tokens)
    assert counts == (0, 1, 1)


def test_sample_step_then_abort_then_update() -> None:
    """Tokens sampled off-thread for a request aborted before update are dropped; the others
    are applied exactly as update() alone would."""
    ex = FakeExecutor()
    sched = make_scheduler(ex)
    a, b = make_request(4, request_id="a"), make_request(5, request_id="b")
    sched.add(a)
    sched.add(b)
    plan = sched.schedule()
    assert plan is not None
    result = ex.execute(plan)
    sampled = sched.sample_step(plan, result)
    assert [s.request_id for s in sampled.seqs] == ["a", "b"]
    sched.abort("a")
    outs = sched.update(plan, result, sampled)
    assert [(o.request_id, o.new_token_ids) for o in outs] == [
        ("b", greedy_reference(b.prompt_token_ids, 1))]
    sched.check_integrity()
