"""Per-row logits processing before sampling: penalties and hard bans.

Order (HF / vLLM): repetition penalty, presence + frequency penalties, then bans (bad words,
end ids before min_tokens). Each function edits one float32 row in place; the caller passes a
copy so the executor's raw logits stay intact for log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from scheduler.request import SamplingParams

GREEDY_EPS = 1e-5  # temperatures below this are greedy (as vLLM)


def is_greedy(params: SamplingParams) -> bool:
    return params.temperature < GREEDY_EPS


def has_penalties(params: SamplingParams) -> bool:
    return (params.repetition_penalty != 1.0 or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0)


def needs_processing(params: SamplingParams, num_output: int) -> bool:
    return has_penalties(params) or bool(params.bad_words_ids) or num_output < params.min_tokens


def apply_repetition_penalty(row: np.ndarray, all_token_ids: Seq[int], penalty: float) -> None:
    """HF semantics over prompt + output: positive logits divided, negative multiplied."""
    ids = np.unique(np.asarray(all_token_ids, dtype=np.int64))
    vals = row[ids]
    row[ids] = np.where(vals > 0, vals / penalty, vals * penalty)


def apply_presence_frequency(
    row: np.ndarray, output_ids: Seq[int], presence: float, frequency: float
) -> None:
    """OpenAI semantics over output tokens: logit -= frequency * count + presence * (count > 0)."""
    if not output_ids:
        return
    ids, counts = np.unique(np.asarray(output_ids, dtype=np.int64), return_counts=True)
    row[ids] -= (frequency * counts + presence).astype(row.dtype)


def banned_bad_words(all_token_ids: Seq[int], bad_words: Seq[Seq[int]]) -> list[int]:
    """Tokens that would complete a bad word: the last token of every bad word whose prefix
    equals the tail of the sequence (prompt + output, as HF's NoBadWordsLogitsProcessor)."""
    banned = []
    n = len(all_token_ids)
    for word in bad_words:
        prefix_len = len(word) - 1
        if prefix_len == 0:
            banned.append(word[-1])
        elif prefix_len <= n and list(all_token_ids[n - prefix_len :]) == list(word[:-1]):
            banned.append(word[-1])
    return banned


def process_row(
    row: np.ndarray,
    params: SamplingParams,
    all_token_ids: Seq[int],
    num_prompt: int,
    end_ids: Seq[int],
) -> None:
    """Apply every processor `params` asks for to one logits row (in place)."""
    output_ids = all_token_ids[num_prompt:]
    if params.repetition_penalty != 1.0:
        apply_repetition_penalty(row, all_token_ids, params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        apply_presence_frequency(row, output_ids, params.presence_penalty, params.frequency_penalty)
    if params.bad_words_ids:
        banned = banned_bad_words(all_token_ids, params.bad_words_ids)
        if banned:
            row[banned] = -np.inf
    if len(output_ids) < params.min_tokens and end_ids:
        vocab = row.shape[0]  # an end id past the vocabulary is never produced: nothing to ban
        row[[e for e in end_ids if e < vocab]] = -np.inf


def banned_ids(params: SamplingParams, all_token_ids: Seq[int], num_prompt: int,
               end_ids: Seq[int]) -> set[int]:
    """The ids a greedy row must not pick now: bad-word completions, end ids before min_tokens."""
    banned: set[int] = set()
    if params.bad_words_ids:
        banned.update(banned_bad_words(all_token_ids, params.bad_words_ids))
    if len(all_token_ids) - num_prompt < params.min_tokens:
        banned.update(end_ids)
    return banned


def greedy_processed_token(row: np.ndarray, params: SamplingParams, all_token_ids: Seq[int],
                           num_prompt: int, end_ids: Seq[int], raw_argmax: int) -> int:
    """argmax of `process_row(copy of row)`, without the copy when the answer is known.

    Bans (min_tokens' end ids, bad words) only lower values to -inf, so when the raw argmax
    is not banned it is the answer: a set lookup instead of copying, editing and scanning a
    vocabulary-wide row (what benchmark clients' min_tokens = max_tokens costs every step).
    Penalised rows, or a banned argmax, take the full-row path (a sparse version measured
    slower on CPU: the penalties' own np.unique calls dominate)."""
    if not has_penalties(params) and raw_argmax not in banned_ids(
            params, all_token_ids, num_prompt, end_ids) and np.isfinite(row[raw_argmax]):
        return raw_argmax
    full = np.array(row, dtype=np.float32, copy=True)
    process_row(full, params, all_token_ids, num_prompt, end_ids)
    return int(np.argmax(full))
