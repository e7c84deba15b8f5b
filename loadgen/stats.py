"""Summaries of one run: throughput, latency percentiles, errors by kind, goodput.

Failed requests are counted (and grouped by kind) but excluded from every latency statistic
and from the token throughputs: a failure is never averaged into a latency.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadgen.client import RequestResult

PERCENTILES: tuple[int, ...] = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean and percentiles of one latency metric, in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class RunStats:
    """Everything reported about one run (one sweep value)."""

    mode: str                       # "concurrency" | "request_rate"
    value: float                    # the sweep value
    num_requests: int
    completed: int
    failed: int
    errors: dict[str, int]          # error kind -> count
    duration_s: float               # first send -> last completion
    total_input_tokens: int         # completed requests only
    total_output_tokens: int        # re-tokenized streamed events of completed requests
    total_output_tokens_concat: int  # the same, re-tokenizing each whole text at once
    request_throughput: float       # completed req/s
    output_throughput: float        # output tok/s
    total_token_throughput: float   # (input + output) tok/s
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2e_ms: Summary
    short_outputs: int              # completed with fewer tokens than forced
    goodput: float | None           # req/s meeting every SLO given; None without SLOs
    slo_met: int | None             # how many met them
    error_samples: dict[str, str] = field(default_factory=dict)  # one message per kind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """numpy's linear-interpolation percentile; NaN for an empty input."""
    if not values:
        return math.nan
    return float(np.percentile(values, q))


def summarize(values_s: Sequence[float]) -> Summary:
    """Summary in milliseconds of a list of seconds."""
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(len(ms), sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 90),
                   percentile(ms, 99), min(ms), max(ms))


def tpot_s(result: RequestResult) -> float | None:
    """Mean time per output token after the first; None with fewer than two tokens."""
    if result.ttft_s is None or result.num_output_tokens < 2:
        return None
    return (result.e2e_s - result.ttft_s) / (result.num_output_tokens - 1)


def meets_slo(result: RequestResult, slo_ttft_ms: float | None,
              slo_tpot_ms: float | None) -> bool:
    """A completed request within every SLO given."""
    if not result.ok:
        return False
    if slo_ttft_ms is not None and (result.ttft_s is None or result.ttft_s * 1e3 > slo_ttft_ms):
        return False
    tpot = tpot_s(result)
    return slo_tpot_ms is None or tpot is None or tpot * 1e3 <= slo_tpot_ms


def compute_stats(results: Sequence[RequestResult], mode: str, value: float,
                  duration_s: float, slo_ttft_ms: float | None = None,
                  slo_tpot_ms: float | None = None) -> RunStats:
    """Aggregate a run. `duration_s` is the run's wall time."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    errors = Counter(r.error_kind or "unknown" for r in failed)
    samples = {r.error_kind or "unknown": r.error or "" for r in reversed(failed)}
    in_tok = sum(r.input_len for r in ok)
    out_tok = sum(r.num_output_tokens for r in ok)
    dur = max(duration_s, 1e-9)
    goodput, slo_met = None, None
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        slo_met = sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in ok)
        goodput = slo_met / dur
    tpots = [t for t in (tpot_s(r) for r in ok) if t is not None]
    return RunStats(
        mode=mode, value=value, num_requests=len(results), completed=len(ok),
        failed=len(failed), errors=dict(sorted(errors.items())), duration_s=duration_s,
        total_input_tokens=in_tok, total_output_tokens=out_tok,
        total_output_tokens_concat=sum(r.num_output_tokens_concat for r in ok),
        request_throughput=len(ok) / dur, output_throughput=out_tok / dur,
        total_token_throughput=(in_tok + out_tok) / dur,
        ttft_ms=summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_ms=summarize(tpots),
        itl_ms=summarize([gap for r in ok for gap in r.itl_s]),
        e2e_ms=summarize([r.e2e_s for r in ok]),
        short_outputs=sum(r.num_output_tokens < r.expected_output_len for r in ok),
        goodput=goodput, slo_met=slo_met, error_samples=dict(sorted(samples.items())))
