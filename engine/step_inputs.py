"""A step plan as the model graph's small index inputs (the I/O table in engine/builder.py):
numpy only, shared by every executor of that graph and by the device-side staging
(engine/device/step_io.py), which is why it sits below both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.plan import ScheduledSeq, StepPlan


@dataclass(frozen=True, slots=True)
class PackedStep:
    """The graph's index inputs for one plan, plus where each token's K/V goes."""

    feeds: dict[str, np.ndarray]  # every graph input except kv_cache
    slot_blocks: np.ndarray  # int64 [T] physical block of each new token
    slot_offsets: np.ndarray  # int64 [T] offset inside that block


def pack_seqs(seqs: Sequence[ScheduledSeq], block_size: int) -> PackedStep:
    """Turns scheduled sequences into graph inputs (see the I/O table in engine/builder.py)."""
    lens = [len(s.token_ids) for s in seqs]
    total, batch, tq = sum(lens), len(seqs), max(lens)
    past_blocks = max(1, max(-(-s.start_pos // block_size) for s in seqs))
    tables = np.zeros((batch, past_blocks), dtype=np.int64)
    pad = np.empty((batch, tq), dtype=np.int64)
    positions = np.empty(total, dtype=np.int64)
    unpad = np.empty(total, dtype=np.int64)
    blocks = np.empty(total, dtype=np.int64)
    logit_rows: list[int] = []
    row = 0
    for b, (seq, n) in enumerate(zip(seqs, lens, strict=True)):
        needed = -(-seq.start_pos // block_size)
        tables[b, :needed] = seq.block_table[:needed]
        pad[b] = row + np.minimum(np.arange(tq), n - 1)
        pos = np.arange(seq.start_pos, seq.start_pos + n, dtype=np.int64)
        positions[row:row + n] = pos
        unpad[row:row + n] = b * tq + np.arange(n)
        table = np.asarray(seq.block_table, dtype=np.int64)
        blocks[row:row + n] = table[pos // block_size]
        row += n
        if seq.want_logits:
            logit_rows.append(row - 1)
    ids = np.fromiter((t for s in seqs for t in s.token_ids), dtype=np.int64, count=total)
    feeds = {"input_ids": ids, "positions": positions, "block_tables": tables,
             "past_lens": np.array([s.start_pos for s in seqs], dtype=np.int64),
             "pad_index": pad, "unpad_index": unpad,
             "logit_index": np.array(logit_rows, dtype=np.int64)}
    return PackedStep(feeds=feeds, slot_blocks=blocks, slot_offsets=positions % block_size)


def pack_plan(plan: StepPlan, block_size: int) -> PackedStep:
    """The whole plan as one graph call (executors that do not split by padding)."""
    return pack_seqs(plan.seqs, block_size)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A padded decode shape: rows (sequences) and past blocks per row."""

    batch: int
    blocks: int


def pack_decode(seqs: Sequence[ScheduledSeq], block_size: int, bucket: Bucket
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The graph inputs of a decode step padded to `bucket`, and its slot mapping (-1: pad)."""
    n, batch = len(seqs), bucket.batch
    ids = np.zeros(batch, dtype=np.int64)
    ids[:n] = [s.token_ids[0] for s in seqs]
    past = np.zeros(batch, dtype=np.int64)
    past[:n] = [s.start_pos for s in seqs]
    tables = np.zeros((batch, bucket.blocks), dtype=np.int64)
    slots = np.full(batch, -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        needed = s.start_pos // block_size + 1  # the past's blocks and the new token's
        tables[i, :needed] = s.block_table[:needed]
        slots[i] = s.block_table[s.start_pos // block_size] * block_size + s.start_pos % block_size
    rows = np.arange(batch, dtype=np.int64)
    feeds = {"input_ids": ids, "positions": past.copy(), "block_tables": tables,
             "past_lens": past, "pad_index": rows.reshape(batch, 1), "unpad_index": rows,
             "logit_index": rows.copy()}
    return feeds, slots


def pair_feeds(seqs: Sequence[ScheduledSeq], slots: np.ndarray, block_size: int,
               num_blocks: int, kv_heads: int) -> dict[str, np.ndarray]:
    """The paged prefill graph's pair arrays (engine/graph/paged.py): every (sequence, kv head)
    pair is a sequence of PagedAttention over a cache of kv_heads * num_blocks blocks with one
    head; its tokens back to back. `slots`: each packed token's pool slot (plan order)."""
    lens = np.array([len(s.token_ids) for s in seqs], dtype=np.int64)
    heads = np.arange(kv_heads, dtype=np.int64)
    pair_lens = np.repeat(lens, kv_heads)  # pair p = b * kv_heads + h
    cu = np.concatenate([np.zeros(1, np.int64), np.cumsum(pair_lens)])
    pair = np.repeat(np.arange(pair_lens.size), pair_lens)  # the pair of each pair-major row
    first = np.repeat(np.cumsum(lens) - lens, kv_heads)  # each pair's sequence's first token
    token = first[pair] + np.arange(cu[-1]) - cu[pair]
    order = token * kv_heads + np.tile(heads, len(seqs))[pair]  # its natural row
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    ends = [s.start_pos + n for s, n in zip(seqs, lens.tolist(), strict=True)]
    blocks = max(-(-end // block_size) for end in ends)
    tables = np.zeros((len(seqs), blocks), dtype=np.int64)
    for b, (s, end) in enumerate(zip(seqs, ends, strict=True)):
        used = -(-end // block_size)
        tables[b, :used] = s.block_table[:used]
    moved = tables[:, None, :] + (heads * num_blocks)[None, :, None]  # [B, KVH, MB]
    pair_slots = (slots[:, None] + heads[None, :] * num_blocks * block_size).ravel()[order]
    return {"pair_order": order, "pair_inverse": inverse, "pair_cu": cu,
            "pair_past": np.repeat(np.array([s.start_pos for s in seqs], dtype=np.int64),
                                   kv_heads),
            "pair_table": moved.reshape(len(seqs) * kv_heads, blocks),
            "pair_slots": pair_slots}
