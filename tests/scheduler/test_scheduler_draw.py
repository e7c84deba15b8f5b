"""The batched sampler (candidate window for top_p) equals the exact full-sort reference."""

from __future__ import annotations

import itertools

import numpy as np

from scheduler.draw import CANDIDATE_WINDOW, draw_rows, top_k_set
from scheduler.request import SamplingParams
from scheduler.sampling import sample_row


def random_logits(rng: np.random.Generator, rows: int, vocab: int, scale: float) -> np.ndarray:
    return (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)


def test_fast_path_equals_full_sort_on_random_logits() -> None:
    """Same token for the same uniform as the full-sort reference, for flat and peaked rows and
    every combination of temperature, top_p, min_p and top_k; peaked rows use the window."""
    rng = np.random.default_rng(11)
    combos = itertools.product((0.5, 0.8, 1.3), (0.5, 0.9, 0.95, 1.0), (0.0, 0.05), (0, 40))
    for temperature, top_p, min_p, top_k in combos:
        p = SamplingParams(temperature=temperature, top_p=top_p, min_p=min_p, top_k=top_k)
        for scale in (1.0, 4.0):
            x = random_logits(rng, 12, 6000, scale)
            us = rng.random(12).tolist()
            counts = [0]
            fast = draw_rows(x.copy(), [p] * 12, us, counts)
            assert fast == [sample_row(x[i], p, us[i]) for i in range(12)], (p, scale)
            if scale == 4.0 and top_p < 1.0:
                assert counts[0] == 0  # peaked rows: the nucleus fits the window


def test_fast_path_at_model_vocab_and_full_sort_count() -> None:
    """At vocab 49152, flat rows (nucleus ~ the vocab) are counted as full-sort rows and still
    match the reference; mixed parameters in one batch each get their own row's draw."""
    rng = np.random.default_rng(5)
    x = np.concatenate([random_logits(rng, 4, 49152, 1.0), random_logits(rng, 4, 49152, 4.0)])
    params = [SamplingParams(temperature=0.8, top_p=0.95)] * 6 + [
        SamplingParams(temperature=1.0, top_k=50, top_p=0.9), SamplingParams(temperature=0.7)]
    us = rng.random(8).tolist()
    counts = [0]
    fast = draw_rows(x.copy(), params, us, counts)
    assert fast == [sample_row(x[i], params[i], us[i]) for i in range(8)]
    assert counts[0] == 4
    assert CANDIDATE_WINDOW < 49152


def test_nucleus_matches_naive_float64_definition() -> None:
    """Against a naive float64 nucleus (sort, smallest prefix reaching top_p, inverse CDF in
    vocabulary order) on a small vocab: identical tokens."""
    rng = np.random.default_rng(2)
    p = SamplingParams(temperature=0.9, top_p=0.8)
    for _ in range(200):
        x = random_logits(rng, 1, 50, 2.0)
        u = float(rng.random())
        z = x[0].astype(np.float64) / 0.9
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        cut = int(np.searchsorted(np.cumsum(probs[order]), 0.8)) + 1
        kept = np.zeros(50, bool)
        kept[order[:cut]] = True
        q = np.where(kept, probs, 0.0)
        naive = int(np.searchsorted(np.cumsum(q), u * q.sum(), side="right"))
        assert draw_rows(x.copy(), [p], [u])[0] == naive


def test_one_uniform_per_row_regardless_of_batch() -> None:
    """A row's token depends only on its own logits, parameters and uniform."""
    rng = np.random.default_rng(9)
    x = random_logits(rng, 6, 3000, 3.0)
    p = SamplingParams(temperature=0.8, top_p=0.95)
    us = rng.random(6).tolist()
    batched = draw_rows(x.copy(), [p] * 6, us)
    assert batched == [draw_rows(x[i : i + 1].copy(), [p], [us[i]])[0] for i in range(6)]


def test_top_k_keeps_ties_and_fast_cut_matches_partition() -> None:
    """top_k keeps every token tied with the k-th (HF / vLLM); the sampled-cut fast path gives
    exactly the full partition's set on random rows."""
    x = np.array([[3, 3, 1, 0]], np.float32)
    assert draw_rows(x.copy(), [SamplingParams(temperature=1.0, top_k=1)], [0.999])[0] == 1
    rng = np.random.default_rng(4)
    for k in (1, 5, 50, 200):
        e = np.exp(rng.standard_normal(49152).astype(np.float32) * 3 - 20)
        fast, full = top_k_set(e, k, full=False), top_k_set(e, k, full=True)
        assert fast[0].tolist() == full[0].tolist() and fast[0].shape[0] == k
