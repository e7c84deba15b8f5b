"""The single-sequence past mirror: built from the pool, appended per step, dropped when the pool
changes under it; and the executor's single-token calls over it against the float64 reference."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from test_q4_graph import BLOCK, CONFIG, NUM_BLOCKS, Model, model  # noqa: F401 (fixture)
from tiny_llama import PagedSeq, ShuffledBlocks, assert_close, schedule

from engine.builder import MODEL_FILE, Q4_MODEL_FILE
from engine.executors.ort import DENSE, SINGLE_TOKEN, OrtExecutor
from engine.executors.past_mirror import BOUND_STEP, PastMirror
from engine.host_kv_pool import HostKVPool
from engine.reference import reference_logits
from scheduler.plan import ScheduledSeq, StepPlan


def _pool(seed: int) -> HostKVPool:
    pool = HostKVPool(CONFIG, NUM_BLOCKS, BLOCK)
    pool.data[...] = np.random.default_rng(seed).standard_normal(pool.data.shape)
    return pool


def _seq(seq_id: int, table: list[int], past: int) -> ScheduledSeq:
    return ScheduledSeq(seq_id=seq_id, token_ids=[1], start_pos=past, block_table=table,
                        want_logits=True)


def _expected(pool: HostKVPool, table: list[int], past: int) -> list[np.ndarray]:
    kv = pool.read(table, past)  # [L, 2, KVH, past, D]
    return [kv[layer, k].transpose(1, 0, 2) for layer in range(CONFIG.num_layers)
            for k in (0, 1)]


def test_mirror_holds_the_pools_past_and_rebuilds_only_on_a_switch() -> None:
    pool, mirror = _pool(1), PastMirror(CONFIG, BLOCK, NUM_BLOCKS * BLOCK, np.float32)
    table = [9, 3, 40, 7]
    mirror.prepare(_seq(5, table, 10), pool)
    for got, want in zip(mirror.views(), _expected(pool, table, 10), strict=True):
        assert got.flags.c_contiguous and got.shape[0] == mirror.bound == BOUND_STEP
        assert np.array_equal(got[:10], want)
    assert mirror.rebuilds == 1 and mirror.seq_id == 5
    new_kv = np.random.default_rng(2).standard_normal(
        (CONFIG.num_layers, 2, CONFIG.num_kv_heads, 1, CONFIG.head_dim)).astype(np.float32)
    mirror.append(_seq(5, table, 10), new_kv)
    assert mirror.length == 11 and np.array_equal(mirror.views()[1][10], new_kv[0, 1, :, 0])
    mirror.prepare(_seq(5, table, 11), pool)  # the next step of the same sequence: kept
    assert mirror.rebuilds == 1
    mirror.prepare(_seq(6, table, 11), pool)  # another sequence
    assert mirror.rebuilds == 2 and mirror.seq_id == 6
    mirror.prepare(_seq(6, [9, 4, 40, 7], 11), pool)  # same id, another block (copy on write)
    assert mirror.rebuilds == 3
    mirror.prepare(_seq(6, [9, 4, 40, 7], 6), pool)  # same table, shorter past (recomputed)
    assert mirror.rebuilds == 4 and mirror.length == 6
    assert mirror.holds_any({6}, set()) and mirror.holds_any(set(), {4})
    assert not mirror.holds_any({5}, {40, 7})  # 40 and 7 hold no position below 6
    mirror.invalidate()
    assert mirror.seq_id is None and not mirror.holds_any({6}, {9})


def test_mirror_bound_steps_by_bound_step_and_keeps_every_position() -> None:
    """The views' length is the past rounded up to BOUND_STEP (their pointers never move), and
    every appended position stays where it was written."""
    pool, mirror = _pool(3), PastMirror(CONFIG, BLOCK, NUM_BLOCKS * BLOCK, np.float32)
    table = list(range(NUM_BLOCKS))
    mirror.prepare(_seq(1, table, 3), pool)
    pointers = [v.ctypes.data for v in mirror.views()]
    rng = np.random.default_rng(4)
    appended = []
    for past in range(3, 2 * BOUND_STEP + 5):
        kv = rng.standard_normal((CONFIG.num_layers, 2, CONFIG.num_kv_heads, 1,
                                  CONFIG.head_dim)).astype(np.float32)
        mirror.append(_seq(1, table, past), kv)
        appended.append(kv[:, :, :, 0])
        assert mirror.bound == -(-mirror.length // BOUND_STEP) * BOUND_STEP
    key = mirror.views()[2]  # layer 1, K: [bound, KVH, D]
    assert key.shape == (3 * BOUND_STEP, CONFIG.num_kv_heads, CONFIG.head_dim)
    assert [v.ctypes.data for v in mirror.views()] == pointers
    assert np.array_equal(key[:3], _expected(pool, table, 3)[2][:3])
    assert np.array_equal(key[3:mirror.length], np.stack([a[1, 0] for a in appended]))
    mirror.close()
    assert mirror.length == 0


@pytest.fixture
def executor(model: Model) -> Iterator[OrtExecutor]:  # noqa: F811
    _, out, _ = model
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                     max_context=256, intra_op_threads=1, single_token_model=out / Q4_MODEL_FILE)
    yield ex
    ex.close()


def test_single_token_steps_follow_the_pool_when_it_changes(model: Model,  # noqa: F811
                                                          executor: OrtExecutor) -> None:
    """Decode of one sequence reads the mirror (built once), a dense call of that sequence and a
    block copy into its blocks drop it, a one-token prompt (no past) runs dense, and the bound
    views grow past BOUND_STEP: every logits row matches the float64 reference."""
    weights = model[0]
    rng = np.random.default_rng(7)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=7)
    a, b = PagedSeq(0), PagedSeq(1)

    def step(seq: PagedSeq, n: int, copies: list[tuple[int, int]] | None = None) -> None:
        planned = schedule(seq, rng.integers(0, 97, n).tolist(), blocks, BLOCK)
        result = executor.execute(StepPlan(0, [planned], block_copies=copies or []))
        assert_close(result.logits[0], reference_logits(CONFIG, weights, seq.tokens)[-1])

    step(a, 6)
    for _ in range(5):
        step(a, 1)
    mirror = executor._mirror
    assert (executor.runs, mirror.rebuilds, mirror.length) == ({DENSE: 1, SINGLE_TOKEN: 5}, 1, 11)
    step(a, 3)  # a chunk of the same sequence through the dense graph
    assert mirror.seq_id is None
    step(a, 1)
    assert mirror.rebuilds == 2 and mirror.length == 15
    # copy a's first block onto itself's twin: the pool's content for a is unchanged, but a copy
    # landing in a mirrored block must drop the mirror
    own = a.block_table[0]
    step(a, 1, copies=[(own, own)])
    assert mirror.rebuilds == 3
    step(b, 1)  # one-token prompt: no past, dense
    assert executor.runs[DENSE] == 3 and mirror.seq_id == 0
    step(b, 1)  # b's first step with a past: the mirror switches to b
    step(a, 1)  # and back
    assert mirror.rebuilds == 5 and mirror.seq_id == 0
    for _ in range(BOUND_STEP - len(a.tokens) + 3):  # across a bound: the pasts are rebound
        step(a, 1)
    assert mirror.bound == 2 * BOUND_STEP and mirror.rebuilds == 5


def test_a_lone_decode_inside_a_bigger_plan_stays_dense(model: Model) -> None:  # noqa: F811
    """A plan split for padding into [prefill + decode] and [decode]: the second group is one
    token with a past, but not the whole plan, so it runs dense and the mirror is not built
    (sequences taking turns there would copy their pasts in and out every step)."""
    weights, out, _ = model
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                     max_context=256, intra_op_threads=1, pad_slack=0,
                     single_token_model=out / Q4_MODEL_FILE)
    rng = np.random.default_rng(9)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=9)
    seqs = [PagedSeq(i) for i in range(3)]
    for seq in seqs[1:]:  # two sequences with a past
        ex.execute(StepPlan(0, [schedule(seq, rng.integers(0, 97, 5).tolist(), blocks, BLOCK)]))
    plan = [schedule(seqs[0], rng.integers(0, 97, 8).tolist(), blocks, BLOCK),
            *(schedule(s, rng.integers(0, 97, 1).tolist(), blocks, BLOCK) for s in seqs[1:])]
    result = ex.execute(StepPlan(1, plan))
    for row, seq in zip(result.logits, seqs, strict=True):
        assert_close(row, reference_logits(CONFIG, weights, seq.tokens)[-1])
    assert ex.runs == {DENSE: 4, SINGLE_TOKEN: 0} and ex._mirror.rebuilds == 0
    ex.close()


def test_bound_stops_at_a_capacity_short_of_the_next_step(model: Model) -> None:  # noqa: F811
    """A pool of 10 blocks of 4 (capacity 40, not a multiple of BOUND_STEP): past 32 tokens the
    views are the whole 40-slot mirror, and decode up to the last slot matches the reference."""
    weights, out, _ = model
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=10, block_size=BLOCK,
                     max_context=256, intra_op_threads=1, single_token_model=out / Q4_MODEL_FILE)
    rng = np.random.default_rng(11)
    blocks = ShuffledBlocks(10, seed=11)
    seq = PagedSeq(0)
    for n in [30] + [1] * 10:  # positions 30..39
        result = ex.execute(StepPlan(0, [schedule(seq, rng.integers(0, 97, n).tolist(), blocks,
                                                  BLOCK)]))
        assert_close(result.logits[0], reference_logits(CONFIG, weights, seq.tokens)[-1])
    assert ex._mirror.bound == 40 and ex._mirror.length == 40
    assert ex.runs == {DENSE: 1, SINGLE_TOKEN: 10}
    ex.close()
