"""The single-sequence past mirror: built from the pool, grown by the position each step writes,
dropped when the pool changes under it; and the executor's single-token calls over it against
the float64 reference."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from test_q4_graph import BLOCK, CONFIG, NUM_BLOCKS, Model, model  # noqa: F401 (fixture)
from tiny_llama import PagedSeq, ShuffledBlocks, assert_close, schedule

from engine.builder import MODEL_FILE, Q4_MODEL_FILE
from engine.executors.ort import DENSE, SINGLE_TOKEN, OrtExecutor
from engine.executors.past_mirror import PastMirror, zeroed_buffer
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


def _write(mirror: PastMirror, rng: np.random.Generator) -> np.ndarray:
    """What the graph does in a step: the token's K/V into every buffer at position `length`."""
    kv = rng.standard_normal((CONFIG.num_layers, 2, CONFIG.num_kv_heads,
                              CONFIG.head_dim)).astype(np.float32)
    for i, buffer in enumerate(mirror.buffers()):
        buffer[0, :, mirror.length] = kv[i // 2, i % 2]
    return kv


def test_mirror_holds_the_pools_past_and_rebuilds_only_on_a_switch() -> None:
    pool, mirror = _pool(1), PastMirror(CONFIG, BLOCK, NUM_BLOCKS * BLOCK, np.float32)
    table = [9, 3, 40, 7]
    mirror.prepare(_seq(5, table, 10), pool)
    want = pool.read(table, 10)  # [L, 2, KVH, 10, D]
    for i, got in enumerate(mirror.buffers()):
        assert got.shape == (1, CONFIG.num_kv_heads, NUM_BLOCKS * BLOCK, CONFIG.head_dim)
        assert got.flags.c_contiguous and np.array_equal(got[0, :, :10], want[i // 2, i % 2])
    assert mirror.rebuilds == 1 and mirror.seq_id == 5
    kv = _write(mirror, np.random.default_rng(2))
    assert np.array_equal(mirror.written()[:, :, :, 0], kv)
    mirror.commit(_seq(5, table, 10))
    assert mirror.length == 11
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


def test_mirror_buffers_never_move_and_keep_every_position() -> None:
    """The buffers are the whole capacity from the start (bound once by the executor): every
    position written stays where it was, and the pointers never change."""
    pool, mirror = _pool(3), PastMirror(CONFIG, BLOCK, NUM_BLOCKS * BLOCK, np.float32)
    table = list(range(NUM_BLOCKS))
    mirror.prepare(_seq(1, table, 3), pool)
    pointers = [b.ctypes.data for b in mirror.buffers()]
    rng = np.random.default_rng(4)
    written = []
    for past in range(3, 70):
        written.append(_write(mirror, rng))
        mirror.commit(_seq(1, table, past))
    key = mirror.buffers()[2]  # layer 1, K: [1, KVH, capacity, D]
    assert [b.ctypes.data for b in mirror.buffers()] == pointers and mirror.length == 70
    assert np.array_equal(key[0, :, :3], pool.read(table, 3)[1, 0])
    assert np.array_equal(key[0, :, 3:70], np.stack([w[1, 0] for w in written], axis=1))
    mirror.close()
    assert mirror.length == 0 and mirror.capacity == 0


def test_zeroed_buffer_is_writable_zeros_of_its_own() -> None:
    a, b = zeroed_buffer((2, 3, 1024), np.float32), zeroed_buffer((2, 3, 1024), np.float32)
    assert a.shape == (2, 3, 1024) and a.dtype == np.float32 and not a.any()
    a[1, 2, 1023] = 5.0
    assert a[1, 2, 1023] == 5.0 and not b.any()
    assert zeroed_buffer((0, 4), np.float16).shape == (0, 4)


@pytest.fixture
def executor(model: Model) -> Iterator[OrtExecutor]:  # noqa: F811
    _, out, _ = model
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                     max_context=256, intra_op_threads=1, single_token_model=out / Q4_MODEL_FILE)
    yield ex
    ex.close()


def test_single_token_steps_follow_the_pool_when_it_changes(model: Model,  # noqa: F811
                                                          executor: OrtExecutor) -> None:
    """Decode of one sequence reads and grows the mirror (built once), a dense call of that
    sequence and a block copy into its blocks drop it, a one-token prompt (no past) runs dense,
    two sequences taking turns rebuild it: every logits row matches the float64 reference, and
    the pool holds what the single-token steps wrote."""
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
    assert executor.single_token is not None
    mirror = executor.single_token.mirror
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
    for _ in range(40):
        step(a, 1)
    assert mirror.rebuilds == 5 and mirror.length == len(a.tokens)
    # the pool got every position the graph wrote into the mirror: a fresh mirror built from
    # the pool equals it
    fresh = PastMirror(CONFIG, BLOCK, NUM_BLOCKS * BLOCK, np.float32)
    fresh.prepare(_seq(0, a.block_table, mirror.length), executor.pool)
    for got, want in zip(mirror.buffers(), fresh.buffers(), strict=True):
        assert np.array_equal(got[0, :, :mirror.length], want[0, :, :mirror.length])


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
    assert ex.single_token is not None
    assert ex.runs == {DENSE: 4, SINGLE_TOKEN: 0} and ex.single_token.mirror.rebuilds == 0
    ex.close()


def test_positions_past_the_mirror_run_dense(model: Model) -> None:  # noqa: F811
    """The mirror ends at the smallest of max_context, the pool and max_position_embeddings
    (GroupQueryAttention's RoPE tables): a pool of 10 blocks of 4 holds 40 positions, and a
    context of 300 over 80 blocks stops the single-token steps at position 256 (the tiny
    model's max_position_embeddings); every step matches the reference."""
    weights, out, _ = model

    def decode(num_blocks: int, max_context: int, lengths: list[int]) -> OrtExecutor:
        ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=num_blocks, block_size=BLOCK,
                         max_context=max_context, intra_op_threads=1,
                         single_token_model=out / Q4_MODEL_FILE)
        rng = np.random.default_rng(11)
        blocks, seq = ShuffledBlocks(num_blocks, seed=11), PagedSeq(0)
        for n in lengths:
            planned = schedule(seq, rng.integers(0, 97, n).tolist(), blocks, BLOCK)
            result = ex.execute(StepPlan(0, [planned]))
            assert_close(result.logits[0], reference_logits(CONFIG, weights, seq.tokens)[-1])
        return ex

    ex = decode(10, 256, [30] + [1] * 10)  # positions 30..39: the last slot of the pool
    assert ex.single_token is not None and ex.single_token.mirror.capacity == 40
    assert ex.runs == {DENSE: 1, SINGLE_TOKEN: 10} and ex.single_token.mirror.length == 40
    ex.close()
    assert CONFIG.max_position_embeddings == 256
    ex = decode(80, 300, [250] + [1] * 10)  # positions 250..259
    assert ex.single_token is not None and ex.single_token.mirror.capacity == 256
    assert ex.runs == {DENSE: 1 + 4, SINGLE_TOKEN: 6}  # 250..255 mirrored, 256..259 dense
    ex.close()


def test_a_single_token_step_without_logits_still_writes_its_kv(model: Model,  # noqa: F811
                                                                executor: OrtExecutor) -> None:
    """A one-token step that wants no logits (its row bound empty) returns no row but writes
    its K/V (mirror and pool); the next steps, with logits again, match the reference."""
    weights = model[0]
    rng = np.random.default_rng(13)
    blocks, seq = ShuffledBlocks(NUM_BLOCKS, seed=13), PagedSeq(0)
    executor.execute(StepPlan(0, [schedule(seq, rng.integers(0, 97, 5).tolist(), blocks, BLOCK)]))
    for step_id, want in enumerate((True, False, False, True, True), start=1):
        planned = schedule(seq, rng.integers(0, 97, 1).tolist(), blocks, BLOCK, want_logits=want)
        result = executor.execute(StepPlan(step_id, [planned]))
        assert result.logits.shape == (int(want), CONFIG.vocab_size)
        if want:
            assert_close(result.logits[0], reference_logits(CONFIG, weights, seq.tokens)[-1])
    assert executor.runs == {DENSE: 1, SINGLE_TOKEN: 5}
    kv = executor.pool.read(seq.block_table, len(seq.tokens))  # [L, 2, KVH, 10, D]
    assert executor.single_token is not None
    for i, buffer in enumerate(executor.single_token.mirror.buffers()):
        assert np.array_equal(buffer[0, :, :len(seq.tokens)], kv[i // 2, i % 2])
