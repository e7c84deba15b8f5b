"""Token selection for a batch of logits rows: greedy (vectorized), or sampled per request.

- Plain greedy rows (temperature < GREEDY_EPS, nothing that could move the argmax) take the
  executor's `StepResult.argmax` when it computed one, else one host argmax over those rows.
- Other greedy rows take argmax of the processed logits.
- Sampled rows: logits / temperature -> top_k -> softmax -> top_p -> min_p -> inverse-CDF draw
  with exactly one uniform from the request's own numpy Generator. Each row is computed on its
  own (float64), so a seeded request yields the same tokens alone or in any batch.
- Log-probs follow vLLM's default (`logprobs_mode="raw_logprobs"`): log_softmax of the RAW model
  logits (before penalties, bans and temperature), evaluated at the chosen token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

from scheduler.logits_processors import GREEDY_EPS, is_greedy, needs_processing, process_row
from scheduler.request import SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["GREEDY_EPS", "SampleInput", "SampleStats", "choose_tokens", "is_greedy", "sample",
           "sample_row"]

CDF_BLOCK = 256  # two-level inverse-CDF search: block sums, then one block


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


def is_plain_greedy(r: SampleInput) -> bool:
    """The row's token is the argmax of its raw logits (nothing can move the argmax)."""
    return is_greedy(r.params) and not needs_processing(r.params, len(r.token_ids) - r.num_prompt)


def sample(logits: np.ndarray, rows: list[SampleInput], argmax: np.ndarray | None = None
           ) -> tuple[list[int], list[float | None]]:
    """Choose one token per row of logits [len(rows), vocab]; return tokens and log-probs.
    `argmax` (int64 [rows], optional) is the executor's argmax of each raw logits row."""
    assert logits.shape[0] == len(rows), f"{logits.shape[0]} logits rows for {len(rows)} seqs"
    special = [(i, r) for i, r in enumerate(rows) if not is_plain_greedy(r)]
    want_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs]
    return choose_tokens(logits, argmax, special, want_logprobs)


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
    for i, r in special:
        tokens[i] = _choose_processed(logits[i], r)
    logprobs: list[float | None] = [None] * n
    for i in want_logprobs:
        logprobs[i] = _raw_logprob(logits[i], tokens[i])
    return tokens, logprobs


def _choose_processed(raw: np.ndarray, r: SampleInput) -> int:
    row = np.array(raw, dtype=np.float32, copy=True)
    process_row(row, r.params, r.token_ids, r.num_prompt, r.end_ids)
    if is_greedy(r.params):
        return int(np.argmax(row))
    assert r.rng is not None, "sampled row without a generator"
    return sample_row(row, r.params, float(r.rng.random()))


def sample_row(row: np.ndarray, params: SamplingParams, u: float) -> int:
    """Inverse-CDF draw of one token from a processed logits row given a uniform u in [0, 1)."""
    x = row / np.float32(params.temperature)
    vocab = x.shape[0]
    cand: np.ndarray | None = None
    if 0 < params.top_k < vocab:
        cand = np.sort(np.argpartition(x, vocab - params.top_k)[vocab - params.top_k :])
        x = x[cand]
    top = x.max()
    if not np.isfinite(top):  # everything banned, or a broken model: degrade to argmax
        logger.warning("non-finite logits row (max %s); falling back to argmax", top)
        return int(cand[int(np.argmax(x))]) if cand is not None else int(np.argmax(x))
    probs = np.exp(x - top, dtype=np.float32)
    probs /= np.float32(probs.sum(dtype=np.float64))
    if params.top_p < 1.0:
        probs[probs < top_p_threshold(probs, params.top_p)] = 0.0
    if params.min_p > 0.0:
        probs[probs < params.min_p * probs.max()] = 0.0
    idx = cumsum_search(probs, u * float(probs.sum(dtype=np.float64)))
    return int(cand[idx]) if cand is not None else idx


def top_p_threshold(probs: np.ndarray, top_p: float) -> float:
    """Probability of the least likely token in the nucleus: the smallest most-likely set whose
    mass reaches top_p is {p >= threshold} (ties at the threshold included). One SIMD sort of
    the values; no index sort."""
    desc = np.sort(probs)[::-1]
    total = float(desc.sum(dtype=np.float64))
    return float(desc[cumsum_search(desc, top_p * total, side="left")])


def cumsum_search(values: np.ndarray, target: float, side: str = "right") -> int:
    """np.searchsorted(np.cumsum(values), target, side) for non-negative values, in two levels
    (sums of CDF_BLOCK-sized blocks, then one block) and clamped to the last non-zero value, so
    the returned index always has positive mass. Much cheaper than a full-length cumsum."""
    n = values.shape[0]
    pad = (-n) % CDF_BLOCK
    v = np.concatenate([values, np.zeros(pad, values.dtype)]) if pad else values
    blocks = v.reshape(-1, CDF_BLOCK).sum(axis=1, dtype=np.float64)
    cum_blocks = np.cumsum(blocks)
    j = min(int(np.searchsorted(cum_blocks, target, side=side)), blocks.shape[0] - 1)
    while j > 0 and blocks[j] == 0.0:  # rounding at the top end: step back to mass
        j -= 1
    base = float(cum_blocks[j - 1]) if j else 0.0
    inner = base + np.cumsum(v[j * CDF_BLOCK : (j + 1) * CDF_BLOCK], dtype=np.float64)
    i = min(int(np.searchsorted(inner, target, side=side)), CDF_BLOCK - 1)
    while i > 0 and v[j * CDF_BLOCK + i] == 0.0:
        i -= 1
    return j * CDF_BLOCK + i


def _raw_logprob(raw: np.ndarray, token: int) -> float:
    x = raw.astype(np.float64)
    m = x.max()
    return float(x[token] - m - np.log(np.exp(x - m).sum()))
