"""PNG of a sweep: throughput and latency percentiles against concurrency or request rate."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadgen.stats import RunStats

logger = logging.getLogger(__name__)

_PCTS: tuple[str, ...] = ("p50", "p90", "p99")


def import_pyplot() -> Any:
    """matplotlib's pyplot (Agg), or ImportError saying how to get it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib, which is not installed: `make install` "
                          "brings it (or pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _xs(runs: Sequence[RunStats]) -> list[float]:
    # An infinite rate is drawn one step beyond the largest finite value.
    finite = [r.value for r in runs if not math.isinf(r.value)]
    top = max(finite, default=1.0) * 2
    return [top if math.isinf(r.value) else r.value for r in runs]


def _label(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def _latency_panel(ax: Any, xs: list[float], runs: Sequence[RunStats], attr: str,
                   title: str) -> None:
    for pct in _PCTS:
        ax.plot(xs, [getattr(getattr(r, attr), pct) for r in runs], marker="o", label=pct)
    ax.set_title(title)
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)


def plot_runs(runs: Sequence[RunStats], path: str | Path, title: str = "") -> None:
    """Write a 2x2 figure: throughput, TTFT, TPOT, end-to-end latency."""
    if not runs:
        raise ValueError("nothing to plot")
    plt = import_pyplot()
    xs = _xs(runs)
    xlabel = "concurrency" if runs[0].mode == "concurrency" else "request rate (req/s)"
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=90)
    ax = axes[0][0]
    ax.plot(xs, [r.output_throughput for r in runs], marker="o", color="C0", label="output tok/s")
    ax.set_ylabel("output tok/s", color="C0")
    ax.set_title("throughput")
    ax2 = ax.twinx()
    ax2.plot(xs, [r.request_throughput for r in runs], marker="s", color="C1", label="req/s")
    if runs[0].goodput is not None:
        ax2.plot(xs, [r.goodput or 0.0 for r in runs], marker="^", color="C2", label="goodput")
    ax2.set_ylabel("req/s", color="C1")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8, loc="lower right")
    _latency_panel(axes[0][1], xs, runs, "ttft_ms", "time to first token")
    _latency_panel(axes[1][0], xs, runs, "tpot_ms", "time per output token")
    _latency_panel(axes[1][1], xs, runs, "e2e_ms", "end-to-end latency")
    for a in (axes[0][0], axes[0][1], axes[1][0], axes[1][1]):
        a.set_xlabel(xlabel)
        a.grid(True, alpha=0.3)
        if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            a.set_xscale("log", base=2)
            a.minorticks_off()
        a.set_xticks(xs, labels=[_label(r.value) for r in runs])
        a.set_ylim(bottom=0)
    failed = sum(r.failed for r in runs)
    fig.suptitle(f"{title}  (failed requests: {failed})" if title else f"failed: {failed}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    logger.info("wrote %s", path)
