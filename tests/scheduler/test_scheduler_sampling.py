"""Sampling: every knob on hand-built logits, raw log-probs, and seeded reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fakes import FakeExecutor, fake_logits
from sched_fakes import make_request, make_scheduler, run_all, sample_seqs, seq_of, tokens_of

from scheduler.logits_processors import (
    apply_presence_frequency,
    apply_repetition_penalty,
    banned_bad_words,
)
from scheduler.request import SamplingParams
from scheduler.sampling import cumsum_search, sample_row


def row(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def logp(*probs: float) -> np.ndarray:
    return np.log(np.array(probs, dtype=np.float32))


def draw(x: np.ndarray, u: float, **params: object) -> int:
    return sample_row(x.copy(), SamplingParams(temperature=1.0, **params), u)  # type: ignore[arg-type]


def test_greedy_is_argmax_batched() -> None:
    """temperature 0 picks the argmax of each row."""
    logits = np.stack([row(0, 5, 1), row(9, 1, 2)])
    seqs = [seq_of(SamplingParams(), [0], 1) for _ in range(2)]
    assert sample_seqs(logits, seqs) == ([1, 0], [None, None])


def test_inverse_cdf_draw_and_temperature() -> None:
    """p = [0.25, 0.75]: u below 0.25 -> 0, above -> 1; temperature 0.5 sharpens to p0 = 0.1;
    temperature 2 flattens to p0 = 1/(1+sqrt 3) = 0.366."""
    x = logp(0.25, 0.75)
    assert (draw(x, 0.2), draw(x, 0.3)) == (0, 1)
    sharp = SamplingParams(temperature=0.5)
    assert (sample_row(x, sharp, 0.09), sample_row(x, sharp, 0.11)) == (0, 1)
    flat = SamplingParams(temperature=2.0)
    assert (sample_row(x, flat, 0.36), sample_row(x, flat, 0.37)) == (0, 1)


def test_top_k() -> None:
    """top_k keeps only the k largest logits."""
    x = row(3, 2, 1, 0)
    assert draw(x, 0.999, top_k=1) == 0
    assert draw(x, 0.999, top_k=2) == 1
    assert draw(x, 0.999) == 3


def test_top_p() -> None:
    """top_p keeps the smallest most-likely set reaching the mass: 0.6 -> {0,1}, 0.5 -> {0}."""
    x = logp(0.5, 0.3, 0.2)
    assert draw(x, 0.999, top_p=0.6) == 1
    assert draw(x, 0.999, top_p=0.5) == 0
    assert draw(x, 0.999, top_p=1.0) == 2


def test_top_p_large_vocab_candidate_path() -> None:
    """Over a vocab bigger than the candidate window, top_p still picks within the nucleus."""
    x = np.full(5000, -10.0, dtype=np.float32)
    x[[17, 4000]] = [5.0, 4.0]
    assert draw(x, 0.999, top_p=0.5) == 17
    assert draw(x, 0.999, top_p=0.9) == 4000


def test_min_p() -> None:
    """min_p drops tokens below min_p * max prob: 0.5 keeps {0.5, 0.3}, 0.7 keeps {0.5}."""
    x = logp(0.5, 0.3, 0.2)
    assert draw(x, 0.999, min_p=0.5) == 1
    assert draw(x, 0.999, min_p=0.7) == 0


def test_repetition_penalty_hf_semantics() -> None:
    """Seen tokens (prompt + output): positive logits / p, negative * p; others unchanged."""
    x = row(2.0, -1.0, 4.0)
    apply_repetition_penalty(x, [0, 1, 1], 2.0)
    assert x.tolist() == [1.0, -2.0, 4.0]


def test_presence_and_frequency_penalties() -> None:
    """logit -= frequency * count + presence for each output token."""
    x = row(0, 0, 0, 10, 10)
    apply_presence_frequency(x, [3, 3, 4], presence=1.0, frequency=0.5)
    assert x.tolist() == [0, 0, 0, 8.0, 8.5]


def test_bad_words() -> None:
    """Single-token bad words are always banned; longer ones only when their prefix matches."""
    assert banned_bad_words([7, 1], [[5], [1, 2], [9, 2]]) == [5, 2]
    logits = row(0, 0, 9, 8, 0)[None, :]
    p = SamplingParams(bad_words_ids=((1, 2),))
    assert sample_seqs(logits, [seq_of(p, [7, 1], 1)])[0] == [3]
    assert sample_seqs(logits, [seq_of(p, [7, 0], 1)])[0] == [2]


def test_min_tokens_suppresses_end_ids() -> None:
    """Before min_tokens outputs, end ids get -inf; after, they are allowed."""
    logits = row(0, 9, 1)[None, :]
    p = SamplingParams(min_tokens=2)
    assert sample_seqs(logits, [seq_of(p, [0, 4], 1, (1,))])[0] == [2]
    assert sample_seqs(logits, [seq_of(p, [0, 4, 4], 1, (1,))])[0] == [1]


def test_logprobs_are_raw_log_softmax() -> None:
    """Reported log-prob = log_softmax(raw logits)[token], before penalties and temperature."""
    raw = row(1.0, 2.0, 3.0)
    p = SamplingParams(logprobs=True, repetition_penalty=5.0)
    tokens, lps = sample_seqs(raw[None, :].copy(), [seq_of(p, [0, 2], 1)])
    expect = 2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert tokens == [1] and lps[0] == pytest.approx(expect, abs=1e-12)


def test_seeded_draws_one_uniform_per_token() -> None:
    """A seeded request's k-th token uses the k-th uniform of default_rng(seed)."""
    ex = FakeExecutor()
    sched = make_scheduler(ex)
    req = make_request(5, temperature=1.0, seed=1234, max_tokens=6)
    sched.add(req)
    got = tokens_of(run_all(sched, ex)[req.request_id])
    rng = np.random.default_rng(1234)
    ctx = list(req.prompt_token_ids)
    expect = []
    for _ in range(6):
        t = sample_row(fake_logits(ctx), req.params, float(rng.random()))
        expect.append(t)
        ctx.append(t)
    assert got == expect


def test_seeded_request_same_alone_and_in_busy_batch() -> None:
    """A seeded sampled request yields identical tokens alone and among other sampled, greedy
    and penalized requests, with chunked prefill and preemption pressure."""
    params = dict(temperature=0.9, top_p=0.9, top_k=20, seed=7, max_tokens=12)
    alone_ex = FakeExecutor(num_blocks=64)
    alone = make_scheduler(alone_ex)
    alone.add(make_request(9, request_id="s", **params))
    solo = tokens_of(run_all(alone, alone_ex)["s"])
    busy_ex = FakeExecutor(num_blocks=14)
    busy = make_scheduler(busy_ex, max_num_tokens=6)
    for i in range(6):
        busy.add(make_request(3 + 2 * i, temperature=1.0, max_tokens=10, repetition_penalty=1.3))
    busy.add(make_request(9, request_id="s", **params))
    busy.add(make_request(4, max_tokens=10))
    got = run_all(busy, busy_ex)
    assert tokens_of(got["s"]) == solo
    assert busy.admission.preemptions_total > 0
    other = make_scheduler(FakeExecutor(num_blocks=64))
    other.add(make_request(9, request_id="s", **(params | {"seed": 8})))
    assert tokens_of(run_all(other, FakeExecutor(num_blocks=64))["s"]) != solo


def test_cumsum_search_matches_full_cumsum() -> None:
    """The two-level inverse-CDF search equals searchsorted(cumsum) clamped to positive mass."""
    rng = np.random.default_rng(3)
    for n in (1, 5, 255, 256, 257, 1000):
        for _ in range(50):
            v = rng.random(n) * (rng.random(n) < 0.5)
            if v.sum() == 0:
                continue
            t = float(rng.random() * v.sum())
            for side in ("left", "right"):
                ref = min(int(np.searchsorted(np.cumsum(v), t, side=side)), n - 1)
                while v[ref] == 0:
                    ref -= 1
                assert cumsum_search(v, t, side) == ref


def test_degenerate_rows_do_not_hang() -> None:
    """All-banned (-inf) or NaN rows fall back to argmax instead of looping or crashing."""
    assert draw(np.full(4, -np.inf, np.float32), 0.5, top_p=0.5) == 0
    assert draw(row(0, np.nan, 1), 0.5) in (0, 1, 2)
    assert cumsum_search(np.zeros(300), 0.0) == 0
