"""Property test: random add/step/abort sequences never break KV integrity, never leak a block,
and every greedy request that finishes normally produces exactly its solo reference tokens."""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request, make_scheduler, step

from scheduler.request import FinishReason, QueueFullError, RequestError

EOS = (0, 1)
BASES = [[(b * 13 + i * 5 + 3) % 64 for i in range(24)] for b in range(3)]

add_op = st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 16), st.integers(1, 8),
                   st.integers(1, 12), st.booleans())
ops = st.lists(st.one_of(add_op, st.tuples(st.just("step")), st.tuples(st.just("step")),
                         st.tuples(st.just("abort"), st.integers(0, 50))),
               min_size=100, max_size=130)
configs = st.fixed_dictionaries({
    "policy": st.sampled_from(["max_utilization", "guaranteed_no_evict"]),
    "max_batch_size": st.integers(1, 6), "max_num_tokens": st.integers(1, 16),
    "enable_prefix_caching": st.booleans(), "max_queue_size": st.integers(0, 10)})


@functools.cache
def expected(prompt: tuple[int, ...], max_tokens: int) -> list[int]:
    ref = greedy_reference(prompt, max_tokens)
    for i, t in enumerate(ref):
        if t in EOS:
            return ref[: i + 1]
    return ref


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, num_blocks=st.integers(6, 20), program=ops)
def test_random_operations_keep_integrity(config: dict, num_blocks: int, program: list) -> None:
    ex = FakeExecutor(num_blocks=num_blocks, block_size=4)
    sched = make_scheduler(ex, eos=EOS, **config)
    added: list[str] = []
    prompts: dict[str, tuple[tuple[int, ...], int, bool]] = {}
    tokens: dict[str, list[int]] = {}
    finals: dict[str, FinishReason | None] = {}

    def record(outs: list) -> None:
        for o in outs:
            assert o.request_id not in finals, "output after the final one"
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                finals[o.request_id] = o.finish_reason

    for op in program:
        if op[0] == "add":
            _, base, shared, extra, max_tokens, sampled = op
            prompt = BASES[base][:shared] + [(base + 7 * j + 11) % 64 for j in range(extra)]
            params = {"temperature": 1.0, "seed": len(added)} if sampled else {}
            req = make_request(prompt, max_tokens=max_tokens, **params)
            try:
                sched.add(req)
            except (QueueFullError, RequestError):
                continue
            added.append(req.request_id)
            prompts[req.request_id] = (tuple(prompt), max_tokens, sampled)
        elif op[0] == "step":
            record(step(sched, ex))
        elif added:
            rid = added[op[1] % len(added)]
            out = sched.abort(rid)
            assert (out is None) == (rid in finals)
            if out is not None:
                record([out])
        sched.check_integrity()
    for _ in range(2000):
        if not sched.has_work():
            break
        record(step(sched, ex))
    assert not sched.has_work() and sched.num_unfinished == 0
    assert sched.allocator.num_free == num_blocks
    sched.check_integrity()
    assert set(finals) == set(added)
    if config["policy"] == "guaranteed_no_evict":
        assert sched.admission.preemptions_total == 0
    for rid, (prompt, max_tokens, sampled) in prompts.items():
        if not sampled and finals[rid] in (FinishReason.LENGTH, FinishReason.END_ID):
            assert tokens[rid] == expected(prompt, max_tokens)
