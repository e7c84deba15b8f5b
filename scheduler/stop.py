"""Finish checks after a token was appended: end ids and length.

Stop strings are not matched here: they are a property of the output text, which the server
makes (its incremental detokeniser, server/request/text.py); when the text completes one, the
server finishes the request and the scheduler sees an abort.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from scheduler.sequence import SeqStatus, Sequence


def finish_status(seq: Sequence, end_ids: Seq[int], max_model_len: int) -> SeqStatus | None:
    """The finished status seq reaches with its newest token, or None to keep going."""
    params = seq.params
    n_out = seq.num_output_tokens
    if n_out >= params.min_tokens and not params.ignore_eos and seq.last_token_id in end_ids:
        return SeqStatus.FINISHED_END_ID
    if n_out >= params.max_tokens or seq.num_tokens >= max_model_len:
        return SeqStatus.FINISHED_LENGTH
    return None
