"""What the scheduler hands back: sampled tokens of a step and per-request deltas."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.request import RequestOutput, TopLogprobs
from scheduler.sequence import SeqStatus, Sequence


@dataclass(slots=True)
class SampledTokens:
    """The tokens chosen for one step's logits rows (see Scheduler.sample_step)."""

    step_id: int
    seqs: list[Sequence]  # one per logits row, plan order
    tokens: list[int]
    logprobs: list[float | None]
    top: list[TopLogprobs | None] | None = None  # per row, when some row asked top_logprobs


def delta_output(seq: Sequence) -> RequestOutput:
    """The output tokens seq has not reported yet, with its counters; marks them reported."""
    start, n_prompt = seq.num_reported_tokens, seq.num_prompt_tokens
    n_out = seq.num_tokens - n_prompt
    seq.num_reported_tokens = n_out
    finished = seq.status >= SeqStatus.FINISHED_END_ID
    # positional: this runs once per row per step (field order of RequestOutput)
    return RequestOutput(
        seq.request.request_id,
        seq.tokens_slice(n_prompt + start),
        seq.output_logprobs[start:] if seq.request.params.logprobs else None,
        finished,
        seq.finish_reason if finished else None,
        n_prompt,
        n_out,
        seq.num_cached_tokens,
        seq.error,
        seq.error_type,
        seq.output_top_logprobs[start:] if seq.request.params.top_logprobs else None,
    )
