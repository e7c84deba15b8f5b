"""Token selection for a batch of logits rows: greedy (vectorized), or sampled per request.

- Plain greedy rows (temperature < GREEDY_EPS, nothing that could move the argmax) take the
  executor's `StepResult.argmax` when it computed one, else one host argmax over those rows.
- Other greedy rows take argmax of the processed logits.
- Sampled rows: penalties/bans per row, then temperature -> top_k -> softmax -> top_p -> min_p
  -> inverse-CDF draw with exactly one uniform from the request's own numpy Generator,
  vectorized across the rows (scheduler/draw.py: top_p through a candidate window that is exact).
  Every row's arithmetic depends on that row alone, so a seeded request yields the same tokens
  alone or in any batch.
- Log-probs follow vLLM's default (`logprobs_mode="raw_logprobs"`): log_softmax of the RAW model
  logits (before penalties, bans and temperature), evaluated at the chosen token, and for
  `top_logprobs` rows at the k most likely tokens (`top_logprobs`, same arithmetic).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

from scheduler.draw import ROW_CHUNK, cumsum_search, draw_rows
from scheduler.logits_processors import (
    GREEDY_EPS,
    apply_presence_frequency,
    apply_repetition_penalty,
    greedy_processed_token,
    is_greedy,
    needs_processing,
    process_row,
)
from scheduler.plan import DeviceDraw
from scheduler.request import SamplingParams, TopLogprobs

__all__ = ["GREEDY_EPS", "SampleInput", "SampleStats", "choose_tokens", "cumsum_search",
           "host_draw", "is_greedy", "sample_row", "top_logprobs"]


@dataclass(slots=True)
class SampleInput:
    """What the sampler needs to know about one row."""

    params: SamplingParams
    token_ids: Seq[int]  # prompt + output so far
    num_prompt: int
    end_ids: Seq[int]  # effective end ids (params.end_ids or the model's eos ids)
    rng: np.random.Generator | None  # None only for greedy rows


@dataclass(slots=True)
class SampleStats:
    """Counters of the sampled-row paths (the scheduler keeps one; tests and benches read it)."""

    sampled_rows: int = 0  # rows drawn from a distribution
    full_sort_rows: int = 0  # of those, rows that needed the exact full-vocab nucleus sort


def choose_tokens(logits: np.ndarray, argmax: np.ndarray | None,
                  special: list[tuple[int, SampleInput]], want_logprobs: list[int],
                  stats: SampleStats | None = None) -> tuple[list[int], list[float | None]]:
    """Tokens for every row of logits: rows not listed in `special` are plain greedy (argmax,
    from the executor when given, else computed here only over those rows); `special` rows are
    processed and/or sampled. Log-probs (a pass over the row) only for `want_logprobs` rows."""
    n = logits.shape[0]
    if argmax is not None:
        tokens = argmax.tolist()
    elif not special:
        tokens = np.argmax(logits, axis=1).tolist()
    else:
        tokens = [0] * n
        if len(special) < n:
            plain = np.ones(n, dtype=bool)
            plain[[i for i, _ in special]] = False
            rows = np.flatnonzero(plain)
            for i, t in zip(rows.tolist(), np.argmax(logits[rows], axis=1).tolist(), strict=True):
                tokens[i] = t
    sampled = _choose_special(logits, special, tokens, have_argmax=argmax is not None)
    if stats is not None:
        stats.sampled_rows += sampled[0]
        stats.full_sort_rows += sampled[1]
    logprobs: list[float | None] = [None] * n
    for i in want_logprobs:
        logprobs[i] = _raw_logprob(logits[i], tokens[i])
    return tokens, logprobs


def _choose_special(logits: np.ndarray, special: list[tuple[int, SampleInput]],
                    tokens: list[int], have_argmax: bool) -> tuple[int, int]:
    """Fill tokens of processed-greedy and sampled rows; returns (sampled, full-sort) counts.
    `have_argmax`: tokens[i] already holds each row's raw argmax (the executor's)."""
    sampled: list[tuple[int, SampleInput]] = []
    for i, r in special:
        if is_greedy(r.params):  # min_tokens / bans / penalties: a few ids, not the whole row
            raw = tokens[i] if have_argmax else int(np.argmax(logits[i]))
            tokens[i] = greedy_processed_token(logits[i], r.params, r.token_ids, r.num_prompt,
                                               r.end_ids, raw)
        else:
            sampled.append((i, r))
    if not sampled:
        return 0, 0
    full_sort = [0]
    for lo in range(0, len(sampled), ROW_CHUNK):  # chunks: a copy that stays in cache
        chunk = sampled[lo : lo + ROW_CHUNK]
        x = logits[[i for i, _ in chunk]].astype(np.float32, copy=False)  # fancy index: a copy
        us = []
        for k, (_, r) in enumerate(chunk):
            if needs_processing(r.params, len(r.token_ids) - r.num_prompt):
                process_row(x[k], r.params, r.token_ids, r.num_prompt, r.end_ids)
            assert r.rng is not None, "sampled row without a generator"
            us.append(float(r.rng.random()))
        drawn = draw_rows(x, [r.params for _, r in chunk], us, full_sort)
        for (i, _), t in zip(chunk, drawn, strict=True):
            tokens[i] = t
    return len(sampled), full_sort[0]


def sample_row(row: np.ndarray, params: SamplingParams, u: float) -> int:
    """Draw one token from a processed logits row given a uniform u in [0, 1): the exact
    reference (full-vocab sort for top_p) that the batched candidate path must equal."""
    x = np.array(row, dtype=np.float32)[None, :]  # a copy: draw_rows consumes it
    return draw_rows(x, [params], [u], full=True)[0]


def apply_edits(row: np.ndarray, draw: DeviceDraw) -> None:
    """In place: a `DeviceDraw`'s edits of one row, with `process_row`'s functions."""
    if draw.repetition_penalty != 1.0:
        apply_repetition_penalty(row, draw.history, draw.repetition_penalty)
    if draw.presence_penalty != 0.0 or draw.frequency_penalty != 0.0:
        apply_presence_frequency(row, draw.history[draw.num_prompt:], draw.presence_penalty,
                                 draw.frequency_penalty)
    vocab = row.shape[0]
    bans = [t for t in draw.bans if 0 <= t < vocab]
    if bans:
        row[bans] = -np.inf


def host_draw(raw: np.ndarray, draw: DeviceDraw) -> tuple[int, float | None]:
    """The host's answer to a `DeviceDraw` on one raw logits row: (token, raw log-prob when
    asked) with the arithmetic of the host path (process_row, draw_rows(full=True))."""
    x = np.array(raw, dtype=np.float32, copy=True)
    apply_edits(x, draw)
    if draw.temperature < GREEDY_EPS:
        token = int(np.argmax(x))
    else:
        params = SamplingParams(temperature=draw.temperature, top_k=draw.top_k,
                                top_p=draw.top_p, min_p=draw.min_p)
        token = draw_rows(x[None, :], [params], [draw.u], full=True)[0]
    return token, _raw_logprob(raw, token) if draw.logprob else None


def _raw_logprob(raw: np.ndarray, token: int) -> float:
    x = raw.astype(np.float64)
    m = x.max()
    return float(x[token] - m - np.log(np.exp(x - m).sum()))


def top_logprobs(raw: np.ndarray, k: int) -> TopLogprobs:
    """The k most likely tokens of a raw logits row with their log-probs (as `_raw_logprob`),
    most likely first (ties: lower id first)."""
    x = raw.astype(np.float64)
    m = x.max()
    log_mass = np.log(np.exp(x - m).sum())
    k = min(k, x.shape[0])
    idx = np.argpartition(-x, k - 1)[:k]
    idx = idx[np.lexsort((idx, -x[idx]))]
    return tuple((int(i), float(x[i] - m - log_mass)) for i in idx)
