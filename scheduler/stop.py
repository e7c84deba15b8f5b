"""Finish checks after a token was appended: end ids, stop strings, length.

Stop strings are matched on decoded text across token boundaries, cheaply: only the last
`len(longest stop) + STOP_WINDOW_SLACK` output tokens are decoded, with and without the newest
token; a stop string present in the first text but not the second just appeared. (The window
start may cut a multi-byte character; the slack keeps that away from any match.)
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq

from scheduler.sequence import SeqStatus, Sequence

STOP_WINDOW_SLACK = 8  # extra tokens decoded beyond the longest stop string's length

Decode = Callable[[Seq[int]], str]


def stop_string_hit(output_ids: Seq[int], stops: Seq[str], decode: Decode) -> bool:
    """True if one of `stops` appears in the decoded output and involves its newest token."""
    window = max(len(s) for s in stops) + STOP_WINDOW_SLACK
    tail = output_ids[-window:]
    text = decode(tail)
    if not any(s in text for s in stops):
        return False
    before = decode(tail[:-1]) if len(tail) > 1 else ""
    return any(s in text and s not in before for s in stops)


def finish_status(
    seq: Sequence, end_ids: Seq[int], decode: Decode | None, max_model_len: int
) -> SeqStatus | None:
    """The finished status seq reaches with its newest token, or None to keep going."""
    params = seq.params
    n_out = seq.num_output_tokens
    if n_out >= params.min_tokens:
        if not params.ignore_eos and seq.last_token_id in end_ids:
            return SeqStatus.FINISHED_END_ID
        if params.stop and decode is not None and stop_string_hit(
                seq.output_token_ids, params.stop, decode):
            return SeqStatus.FINISHED_STOP
    if n_out >= params.max_tokens or seq.num_tokens >= max_model_len:
        return SeqStatus.FINISHED_LENGTH
    return None
