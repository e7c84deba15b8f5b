"""Packing a step plan into the model graph's small index inputs (the I/O table in
engine/builder.py): numpy only, shared by every executor of that graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.plan import ScheduledSeq, StepPlan

PAD_SLACK = 128  # padded query slots tolerated beyond 2 x tokens before a plan is split


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


def split_for_padding(seqs: Sequence[ScheduledSeq], slack: int) -> list[list[int]]:
    """Groups of plan indices, each run as one graph call, so that padding to the group's longest
    chunk (B * Tq query slots) stays within 2 x its tokens + `slack`. A long prefill chunk mixed
    with many decodes would otherwise pad every decode to the chunk's length (B * Tq * S scores).
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].token_ids))
    groups: list[list[int]] = []
    tokens = 0
    for i in order:
        n = len(seqs[i].token_ids)
        if groups:
            group = groups[-1]
            widest = len(seqs[group[0]].token_ids)
            if (len(group) + 1) * widest <= 2 * (tokens + n) + slack:
                group.append(i)
                tokens += n
                continue
        groups.append([i])
        tokens = n
    return [sorted(g) for g in groups]
