"""A minimal single-sequence greedy loop over the Executor protocol (CLI and parity tests).

It plans its own steps: one prefill of the whole prompt, then one decode per token, over a
contiguous block table 0..n-1. The server uses the scheduler instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from scheduler.plan import Executor, ScheduledSeq, StepPlan

SEQ_ID = 0


def _block_table(executor: Executor, total_tokens: int) -> list[int]:
    if total_tokens > executor.max_context:
        raise ValueError(f"prompt + max_new_tokens = {total_tokens} exceeds the model's context "
                         f"of {executor.max_context} tokens")
    needed = math.ceil(total_tokens / executor.block_size)
    if needed > executor.num_blocks:
        raise ValueError(f"{total_tokens} tokens need {needed} KV blocks; the pool has "
                         f"{executor.num_blocks}")
    return list(range(needed))


def _step(executor: Executor, step_id: int, tokens: list[int], start: int,
          table: list[int]) -> int:
    plan = StepPlan(step_id=step_id, seqs=[ScheduledSeq(
        seq_id=SEQ_ID, token_ids=tokens, start_pos=start, block_table=table, want_logits=True)])
    result = executor.execute(plan)
    return int(np.argmax(result.logits[0]))


def greedy_generate(executor: Executor, prompt_ids: Sequence[int], max_new_tokens: int,
                    eos_ids: Sequence[int] = ()) -> Iterator[int]:
    """Yield up to `max_new_tokens` greedy tokens; an eos id is yielded, then generation stops."""
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    if max_new_tokens <= 0:
        return
    table = _block_table(executor, len(prompt_ids) + max_new_tokens)
    eos = frozenset(eos_ids)
    token = _step(executor, 0, list(prompt_ids), 0, table)
    position = len(prompt_ids)
    for step in range(1, max_new_tokens + 1):
        yield token
        if token in eos or step == max_new_tokens:
            return
        token = _step(executor, step, [token], position, table)
        position += 1
