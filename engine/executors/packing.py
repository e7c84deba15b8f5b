"""Splitting a plan into graph calls so that padding stays bounded (the packing itself:
engine/step_inputs.py)."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.plan import ScheduledSeq

PAD_SLACK = 128  # padded query slots tolerated beyond 2 x tokens before a plan is split


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
