"""Inverse-CDF draws for sampled rows: vectorized across rows, exact, one uniform per row.

Per row: weights e = exp((x - max x) / temperature) (unnormalized softmax, float32, max 1), mass
Z = sum(e); top_k keeps the tokens at least as likely as the k-th (ties kept, as HF and vLLM;
Z is then their sum); top_p keeps the nucleus, the smallest most-likely set whose mass reaches
top_p * Z (ties at its edge included); min_p keeps e >= min_p; the token is the first kept index
(vocabulary order) whose float64 running sum of kept weights exceeds u * (kept mass).

Fast path for top_p without top_k (`draw_rows`): tokens with e < c = (1 - top_p) * Z / V can
never be in the nucleus (all of them together weigh less than (1 - top_p) * Z), so the nucleus
is found by sorting only the candidates {e >= c}: for peaked (real LM) rows a few hundred to a
few thousand tokens instead of the whole vocab. A threshold set is exactly the head of
the fully sorted row, so the nucleus edge and the kept tokens are those of the full sort
(`draw_row(..., full=True)`, the reference), and so is the draw: the same token for the same u
(barring u within float64 rounding of a CDF step: the two paths sum the same weights in a
different order; see also `nucleus_edge`). Rows with more than CANDIDATE_WINDOW candidates
(flat rows) or whose candidates fall short by rounding take the full sort and are counted.
"""

from __future__ import annotations

import logging

import numpy as np

from scheduler.request import SamplingParams

logger = logging.getLogger(__name__)

CANDIDATE_WINDOW = 8192  # top_p rows with more candidates than this sort the whole row
ROW_CHUNK = 8  # rows turned into weights together (they stay in cache for the draws)
TOP_K_STRIDE = 16  # top_k fast path: the cut is estimated from every 16th weight
CDF_BLOCK = 256  # two-level inverse-CDF search: block sums, then one block


def to_weights(x: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """In place: logits x [m, V] float32 -> e = exp((x - rowmax) / T); returns rowmax [m]."""
    top = x.max(axis=1)
    with np.errstate(invalid="ignore"):  # all -inf / NaN rows: the caller takes argmax
        x -= top[:, None]
    x *= (1.0 / temperatures).astype(np.float32)[:, None]
    np.exp(x, out=x)
    return top


def draw_rows(x: np.ndarray, params: list[SamplingParams], us: list[float],
              counts: list[int] | None = None, full: bool = False) -> list[int]:
    """One token per row of processed logits x [m, V] (float32, CONSUMED: overwritten with the
    weights) with uniforms us. `counts` ([full-sort rows]) is incremented for rows that needed
    a full-vocab sort; full=True skips the candidate window (the reference)."""
    m, vocab = x.shape
    tokens = [0] * m
    temps = np.array([p.temperature for p in params], dtype=np.float64)
    for lo in range(0, m, ROW_CHUNK):
        hi = min(lo + ROW_CHUNK, m)
        finite = np.isfinite(x[lo:hi].max(axis=1)).tolist()
        for k in range(hi - lo):
            if not finite[k]:  # everything banned, or a broken model: degrade to argmax
                logger.warning("non-finite logits row %d; falling back to argmax", lo + k)
                tokens[lo + k] = int(np.argmax(x[lo + k]))
        to_weights(x[lo:hi], temps[lo:hi])
        mass = x[lo:hi].sum(axis=1)  # float32 pairwise sums
        for k, i in enumerate(range(lo, hi)):
            p = params[i]
            if not finite[k]:
                continue
            if 0 < p.top_k < vocab:
                tokens[i] = _draw_top_k(x[i], p, us[i], full)
            else:
                tokens[i] = draw_row(x[i], float(mass[k]), p, us[i], full, counts)
    return tokens


def draw_row(e: np.ndarray, mass: float, p: SamplingParams, u: float, full: bool,
             counts: list[int] | None = None) -> int:
    """Draw from one row's weights e (no top_k) with total `mass`; full=True sorts the whole
    row for top_p (the reference the candidate window must equal)."""
    if p.top_p >= 1.0:
        if p.min_p <= 0.0:
            return cumsum_search(e, u, relative=True)
        cand = np.flatnonzero(e >= np.float32(p.min_p))
        return _draw_kept(cand, e[cand], u)
    if not full:
        head = _nucleus_candidates(e, mass, p.top_p)
        if head is not None:
            token = _draw_nucleus(head[0], head[1], mass, p, u, complete=False)
            if token is not None:
                return token
            logger.debug("top_p candidates short of the nucleus mass (rounding); full sort")
        if counts is not None:
            counts[0] += 1
    return _draw_nucleus_full(e, mass, p, u)


def _draw_nucleus_full(e: np.ndarray, mass: float, p: SamplingParams, u: float) -> int:
    """The reference: sort the whole row for the nucleus edge, zero the rest, draw (dense
    two-level search: no index compaction of a large kept set)."""
    desc = np.ascontiguousarray(np.sort(e)[::-1])
    j = nucleus_edge(desc, p.top_p * mass)
    cut = desc[j if j is not None else desc.shape[0] - 1]
    if p.min_p > 0.0:
        cut = max(cut, np.float32(p.min_p))
    w = e * (e >= cut)  # zero outside the nucleus (np.where is several times slower here)
    return cumsum_search(w, u, relative=True)


def _nucleus_candidates(e: np.ndarray, mass: float, top_p: float
                        ) -> tuple[np.ndarray, np.ndarray] | None:
    """The threshold set {e >= (1 - top_p) * mass / V} (ascending indices, weights), which
    holds the whole nucleus; None when it has more than CANDIDATE_WINDOW tokens (a flat row:
    cheaper to sort the whole row than to compact it first)."""
    mask = e >= np.float32((1.0 - top_p) * mass / e.shape[0])
    if np.count_nonzero(mask) > CANDIDATE_WINDOW:
        return None
    cand = np.flatnonzero(mask)
    return cand, e[cand]


def _draw_nucleus(cand: np.ndarray, vals: np.ndarray, mass: float, p: SamplingParams,
                  u: float, complete: bool) -> int | None:
    """top_p (+ min_p) over candidates (ascending indices, weights vals). If their running sum
    never reaches top_p * mass: None for a partial candidate set (the caller sorts the full
    row), everything kept for a complete one (rounding)."""
    desc = np.ascontiguousarray(np.sort(vals)[::-1])
    j = nucleus_edge(desc, p.top_p * mass)
    if j is None:
        if not complete:
            return None
        j = desc.shape[0] - 1
    thr = desc[j]
    keep = vals >= (max(thr, np.float32(p.min_p)) if p.min_p > 0.0 else thr)
    return _draw_kept(cand[keep], vals[keep], u)


def nucleus_edge(desc: np.ndarray, target: float) -> int | None:
    """Index of the first two-level running sum (float64 sums of CDF_BLOCK blocks, then one
    block) of descending weights that reaches target, stepped back over zero weights; None if
    their total stays below target. A head of a sorted row gets the same index as the whole
    row whenever it reaches the target (same blocks, same sums), except when the target falls
    within float64 rounding of the sum of the head's last, partial block."""
    n = desc.shape[0]
    pad = (-n) % CDF_BLOCK
    v = np.concatenate([desc, np.zeros(pad, desc.dtype)]) if pad else desc
    cum_blocks = np.cumsum(v.reshape(-1, CDF_BLOCK).sum(axis=1, dtype=np.float64))
    if target > cum_blocks[-1]:
        return None
    j = int(np.searchsorted(cum_blocks, target, side="left"))
    base = float(cum_blocks[j - 1]) if j else 0.0
    inner = base + np.cumsum(v[j * CDF_BLOCK : (j + 1) * CDF_BLOCK], dtype=np.float64)
    i = min(j * CDF_BLOCK + int(np.searchsorted(inner, target, side="left")), n - 1)
    while i > 0 and desc[i] == 0.0:
        i -= 1
    return i


def _draw_kept(idx: np.ndarray, vals: np.ndarray, u: float) -> int:
    """Inverse CDF over kept tokens idx (ascending) with weights vals."""
    cum = np.cumsum(vals, dtype=np.float64)
    i = min(int(np.searchsorted(cum, u * float(cum[-1]), side="right")), cum.shape[0] - 1)
    while i > 0 and vals[i] == 0.0:
        i -= 1
    return int(idx[i])


def _draw_top_k(e: np.ndarray, p: SamplingParams, u: float, full: bool) -> int:
    """top_k first, then top_p / min_p within it (in vocabulary order)."""
    cand, vals = top_k_set(e, p.top_k, full)
    if p.top_p < 1.0:
        token = _draw_nucleus(cand, vals, float(vals.sum()), p, u, complete=True)
        assert token is not None, "a complete candidate set always yields a token"
        return token
    if p.min_p > 0.0:
        keep = vals >= np.float32(p.min_p)
        cand, vals = cand[keep], vals[keep]
    return _draw_kept(cand, vals, u)


def top_k_set(e: np.ndarray, k: int, full: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Tokens whose weight is at least the k-th largest (ties kept, as HF / vLLM top-k), as
    ascending indices and weights. Fast path (full=False): the k-th largest of every
    TOP_K_STRIDE-th weight, taken with margin, is a cut that keeps at least k tokens (checked),
    so the exact k-th value is found among those few; full=True partitions the whole row."""
    vocab = e.shape[0]
    if not full and k * TOP_K_STRIDE * 4 < vocab:
        sample = e[::TOP_K_STRIDE]
        r = min(sample.shape[0], 2 * (k // TOP_K_STRIDE) + 8)
        cut = np.partition(sample, sample.shape[0] - r)[sample.shape[0] - r]
        mask = e >= cut
        if k <= np.count_nonzero(mask) <= CANDIDATE_WINDOW:
            cand = np.flatnonzero(mask)
            vals = e[cand]
            kth = np.partition(vals, vals.shape[0] - k)[vals.shape[0] - k]
            keep = vals >= kth
            return cand[keep], vals[keep]
    kth = np.partition(e, vocab - k)[vocab - k]
    cand = np.flatnonzero(e >= kth)
    return cand, e[cand]


def cumsum_search(values: np.ndarray, target: float, side: str = "right",
                  relative: bool = False) -> int:
    """np.searchsorted(np.cumsum(values), target, side) for non-negative values, in two levels
    (sums of CDF_BLOCK-sized blocks, then one block) and clamped to the last non-zero value, so
    the returned index always has positive mass. Much cheaper than a full-length cumsum.
    relative=True: target is a fraction of the total (an inverse-CDF draw for uniform target)."""
    n = values.shape[0]
    pad = (-n) % CDF_BLOCK
    v = np.concatenate([values, np.zeros(pad, values.dtype)]) if pad else values
    blocks = v.reshape(-1, CDF_BLOCK).sum(axis=1, dtype=np.float64)
    cum_blocks = np.cumsum(blocks)
    if relative:
        target *= float(cum_blocks[-1])
    j = min(int(np.searchsorted(cum_blocks, target, side=side)), blocks.shape[0] - 1)
    while j > 0 and blocks[j] == 0.0:  # rounding at the top end: step back to mass
        j -= 1
    base = float(cum_blocks[j - 1]) if j else 0.0
    inner = base + np.cumsum(v[j * CDF_BLOCK : (j + 1) * CDF_BLOCK], dtype=np.float64)
    i = min(int(np.searchsorted(inner, target, side=side)), CDF_BLOCK - 1)
    while i > 0 and v[j * CDF_BLOCK + i] == 0.0:
        i -= 1
    return j * CDF_BLOCK + i
