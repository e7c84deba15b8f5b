"""Statistics: percentiles, per-request TPOT, failures excluded from latencies, goodput."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from loadgen.client import RequestResult
from loadgen.runner import count_output_tokens
from loadgen.stats import compute_stats, percentile, summarize, tpot_s
from loadgen.tokenizer import HFTokenizer


def _ok(index: int, ttft: float, e2e: float, tokens: int, input_len: int = 10) -> RequestResult:
    r = RequestResult(index=index, input_len=input_len, expected_output_len=tokens, ok=True,
                      ttft_s=ttft, e2e_s=e2e, num_output_tokens=tokens)
    r.itl_s = [(e2e - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
    return r


def _failed(index: int, kind: str) -> RequestResult:
    return RequestResult(index=index, input_len=10, expected_output_len=5, ok=False,
                         error_kind=kind, error=f"{kind} happened", ttft_s=0.001, e2e_s=100.0)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    """Linear interpolation, the numpy default, on unsorted data."""
    rng = random.Random(q)
    values = [rng.random() * 100 for _ in range(37)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_small_cases() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert math.isnan(percentile([], 50))


def test_summarize_is_in_ms() -> None:
    s = summarize([0.001, 0.002, 0.003, 0.004])
    assert (s.count, s.mean, s.p50, s.min, s.max) == (4, pytest.approx(2.5), pytest.approx(2.5),
                                                      pytest.approx(1.0), pytest.approx(4.0))
    assert math.isnan(summarize([]).mean)


def test_tpot() -> None:
    """TPOT = (e2e - ttft) / (tokens - 1); undefined below two tokens."""
    assert tpot_s(_ok(0, 0.1, 1.0, 10)) == pytest.approx(0.1)
    assert tpot_s(_ok(0, 0.1, 0.1, 1)) is None


def test_failures_counted_by_kind_and_excluded_from_latency() -> None:
    """A failed request is in `failed`/`errors`, never in latencies or token throughput."""
    results = [_ok(0, 0.1, 1.0, 10), _ok(1, 0.3, 2.0, 10), _failed(2, "dropped"),
               _failed(3, "http_503"), _failed(4, "dropped")]
    st = compute_stats(results, "concurrency", 2, duration_s=4.0)
    assert (st.num_requests, st.completed, st.failed) == (5, 2, 3)
    assert st.errors == {"dropped": 2, "http_503": 1}
    assert st.error_samples["dropped"] == "dropped happened"
    assert st.e2e_ms.count == 2 and st.e2e_ms.max == pytest.approx(2000.0)
    assert st.ttft_ms.mean == pytest.approx(200.0)
    assert st.total_output_tokens == 20 and st.total_input_tokens == 20
    assert st.request_throughput == pytest.approx(0.5)
    assert st.output_throughput == pytest.approx(5.0)
    assert st.total_token_throughput == pytest.approx(10.0)
    assert st.goodput is None and st.slo_met is None


def test_goodput_counts_only_requests_within_every_slo() -> None:
    """Goodput = completed requests meeting all SLOs / duration."""
    results = [_ok(0, 0.050, 0.950, 10),   # ttft 50 ms, tpot 100 ms
               _ok(1, 0.200, 0.650, 10),   # ttft 200 ms, tpot 50 ms
               _ok(2, 0.050, 0.500, 10),   # ttft 50 ms, tpot 50 ms
               _failed(3, "timeout")]
    st = compute_stats(results, "request_rate", 1.0, 2.0, slo_ttft_ms=100, slo_tpot_ms=60)
    assert st.slo_met == 1 and st.goodput == pytest.approx(0.5)
    st = compute_stats(results, "request_rate", 1.0, 2.0, slo_ttft_ms=100)
    assert st.slo_met == 2 and st.goodput == pytest.approx(1.0)
    st = compute_stats(results, "request_rate", 1.0, 2.0, slo_tpot_ms=60)
    assert st.slo_met == 2


def test_short_outputs_flagged() -> None:
    r = _ok(0, 0.1, 1.0, 10)
    r.expected_output_len = 16
    assert compute_stats([r], "concurrency", 1, 1.0).short_outputs == 1


def test_output_tokens_counted_per_event(fake_tok: HFTokenizer) -> None:
    """Each event's text is re-tokenized on its own: a model that streams a non-canonical split
    (" al" + "pha") is credited with the tokens it streamed, not the merged " alpha"."""
    r = RequestResult(index=0, input_len=1, expected_output_len=2, ok=True)
    r.chunks, r.text = [" al", "pha"], " alpha"
    count_output_tokens([r], fake_tok)

    def n(text: str) -> int:
        return len(fake_tok.encode(text, add_special_tokens=False))

    assert r.num_output_tokens == n(" al") + n("pha") >= 2
    assert r.num_output_tokens_concat == n(" alpha") == 1
