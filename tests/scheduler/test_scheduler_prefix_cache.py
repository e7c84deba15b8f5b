"""Prefix caching: hits, block sharing across live requests, copy-on-write, salts, eviction."""

from __future__ import annotations

from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request, make_scheduler, run_all, step, tokens_of

PREFIX = [5, 9, 13, 17, 21, 25, 29, 33]  # two full blocks of 4


def test_prefix_hit_counts_and_tokens() -> None:
    """num_cached_tokens and the prefix-cache counters report the hit exactly."""
    ex = FakeExecutor(num_blocks=16)
    sched = make_scheduler(ex)
    sched.add(make_request(PREFIX + [1, 2], request_id="a"))
    run_all(sched, ex)
    b = make_request(PREFIX + [3], request_id="b", max_tokens=5)
    sched.add(b)
    got = run_all(sched, ex)
    assert got["b"][0].num_cached_tokens == 8
    assert tokens_of(got["b"]) == greedy_reference(b.prompt_token_ids, 5)
    st = sched.stats()
    assert (st.prefix_cache_queries_total, st.prefix_cache_hits_total) == (2 + 2, 2)
    assert ex.plans[-5].seqs[0].start_pos == 8


def test_live_requests_share_blocks() -> None:
    """While A runs, B with the same prefix references A's first two blocks (ref count 2)."""
    ex = FakeExecutor(num_blocks=16)
    sched = make_scheduler(ex)
    sched.add(make_request(PREFIX + [1, 2], request_id="a", max_tokens=8))
    step(sched, ex)
    sched.add(make_request(PREFIX + [3], request_id="b", max_tokens=8))
    first = [o for o in step(sched, ex) if o.request_id == "b"]
    a, b = sched.admission.running
    assert a.block_table[:2] == b.block_table[:2]
    assert a.block_table[2] != b.block_table[2]
    assert [sched.allocator.ref_count(x) for x in a.block_table[:2]] == [2, 2]
    got = run_all(sched, ex)
    assert tokens_of(first + got["b"]) == greedy_reference(PREFIX + [3], 8)


def test_fully_cached_prompt_copies_on_write() -> None:
    """B's prompt equals A's block-aligned prompt while A still uses those blocks: B recomputes
    only its last token, which lands in a shared block, so that block is copied first
    (StepPlan.block_copies) and A's block is never written by B."""
    ex = FakeExecutor(num_blocks=16)
    sched = make_scheduler(ex)
    sched.add(make_request(PREFIX, request_id="a", max_tokens=8))
    step(sched, ex)
    a_table = list(sched.admission.running[0].block_table)
    sched.add(make_request(PREFIX, request_id="b", max_tokens=8))
    plan = sched.schedule()
    assert plan is not None
    b_row = plan.seqs[1]
    assert (b_row.start_pos, b_row.token_ids) == (7, [33])
    assert b_row.block_table[0] == a_table[0] and b_row.block_table[1] != a_table[1]
    assert plan.block_copies == [(a_table[1], b_row.block_table[1])]
    first = sched.update(plan, ex.execute(plan))
    sched.check_integrity()
    got = run_all(sched, ex)
    ref = greedy_reference(PREFIX, 8)
    assert tokens_of([o for o in first if o.request_id == "b"] + got["b"]) == ref
    assert tokens_of(got["a"]) == ref[2:]  # a's first two tokens came in earlier steps


def test_salt_isolates_cache() -> None:
    """Different cache salts (e.g. adapters) never share blocks."""
    ex = FakeExecutor(num_blocks=16)
    sched = make_scheduler(ex)
    sched.add(make_request(PREFIX + [1], salt="m1"))
    run_all(sched, ex)
    sched.add(make_request(PREFIX + [1], request_id="other", salt="m2"))
    got = run_all(sched, ex)
    assert got["other"][0].num_cached_tokens == 0


def test_disabled_cache_never_hits() -> None:
    """enable_prefix_caching=False: no hits, no cached blocks."""
    ex = FakeExecutor(num_blocks=16)
    sched = make_scheduler(ex, enable_prefix_caching=False)
    sched.add(make_request(PREFIX + [1]))
    run_all(sched, ex)
    sched.add(make_request(PREFIX + [1], request_id="again"))
    got = run_all(sched, ex)
    assert got["again"][0].num_cached_tokens == 0 and sched.stats().blocks_cached == 0


def test_evicted_prefix_recomputes_correctly() -> None:
    """When other requests need the memory, cached blocks are evicted; a later request with the
    old prefix gets no hit and the reference output."""
    ex = FakeExecutor(num_blocks=4)
    sched = make_scheduler(ex)
    sched.add(make_request(PREFIX + [1], max_tokens=3))
    run_all(sched, ex)
    sched.add(make_request([40 + i for i in range(12)], max_tokens=3))
    run_all(sched, ex)
    late = make_request(PREFIX + [1], request_id="late", max_tokens=3)
    sched.add(late)
    got = run_all(sched, ex)
    assert got["late"][0].num_cached_tokens == 0
    assert tokens_of(got["late"]) == greedy_reference(late.prompt_token_ids, 3)
