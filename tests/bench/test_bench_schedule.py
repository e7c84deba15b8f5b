"""Open-loop arrivals: seeded Poisson schedule."""

from __future__ import annotations

import math
import statistics

import pytest

from loadgen.generator import poisson_schedule


def test_seeded_and_reproducible() -> None:
    a = poisson_schedule(100, 4.0, seed=7)
    assert a == poisson_schedule(100, 4.0, seed=7)
    assert a != poisson_schedule(100, 4.0, seed=8)
    assert a[0] == 0.0 and all(x <= y for x, y in zip(a, a[1:], strict=False))


@pytest.mark.parametrize("rate", [0.5, 4.0, 100.0])
def test_mean_gap_is_one_over_rate(rate: float) -> None:
    """Exponential gaps: mean 1/rate and coefficient of variation 1 (within sampling error)."""
    times = poisson_schedule(20001, rate, seed=1)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    assert statistics.stdev(gaps) / mean == pytest.approx(1.0, rel=0.05)


def test_infinite_rate_sends_all_at_once() -> None:
    assert poisson_schedule(5, math.inf, seed=0) == [0.0] * 5
