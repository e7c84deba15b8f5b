"""Console tables (Markdown pipe tables, pasteable into docs) and the JSON results file."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import platform
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from loadgen.config import BenchConfig
from loadgen.stats import RunStats, Summary

logger = logging.getLogger(__name__)

_LATENCIES: tuple[tuple[str, str], ...] = (
    ("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"))


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _sweep_label(mode: str, value: float) -> str:
    if mode == "concurrency":
        return str(int(value))
    return "inf" if math.isinf(value) else f"{value:g}"


def throughput_table(runs: Sequence[RunStats]) -> str:
    """One row per run: counts, errors by kind, throughputs, goodput."""
    mode = runs[0].mode if runs else "concurrency"
    header = [mode, "requests", "ok", "failed", "errors", "req/s", "out tok/s",
              "total tok/s", "goodput req/s"]
    rows = [[_sweep_label(r.mode, r.value), str(r.num_requests), str(r.completed),
             str(r.failed), ", ".join(f"{k}={v}" for k, v in r.errors.items()) or "-",
             _fmt(r.request_throughput, 2), _fmt(r.output_throughput),
             _fmt(r.total_token_throughput),
             _fmt(r.goodput, 2)] for r in runs]
    return _table(header, rows)


def latency_table(runs: Sequence[RunStats]) -> str:
    """Rows of (run, metric) with mean/p50/p90/p99 in ms, over completed requests only."""
    mode = runs[0].mode if runs else "concurrency"
    header = [mode, "metric (ms)", "mean", "p50", "p90", "p99", "n"]
    rows = []
    for r in runs:
        for label, attr in _LATENCIES:
            s: Summary = getattr(r, attr)
            rows.append([_sweep_label(r.mode, r.value), label, _fmt(s.mean), _fmt(s.p50),
                         _fmt(s.p90), _fmt(s.p99), str(s.count)])
    return _table(header, rows)


def render(runs: Sequence[RunStats]) -> str:
    parts = [throughput_table(runs), "", latency_table(runs)]
    samples = {k: v for r in runs for k, v in r.error_samples.items()}
    if samples:
        parts += ["", "error samples:"]
        parts += [f"  {kind}: {msg}" for kind, msg in sorted(samples.items())]
    short = sum(r.short_outputs for r in runs)
    if short:
        parts += ["", f"warning: {short} completed request(s) streamed fewer tokens than forced"]
    return "\n".join(parts)


def machine_info() -> dict[str, Any]:
    try:
        version = metadata.version("trtserve")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "trtserve": version}


def _no_nan(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


def results_document(config: BenchConfig, runs: Sequence[RunStats]) -> dict[str, Any]:
    """All runs plus config, machine and date; strict JSON (NaN -> null, inf -> "inf")."""
    return _no_nan({"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": machine_info(), "config": asdict(config),
                    "runs": [r.to_dict() for r in runs]})


def write_json(path: str | Path, config: BenchConfig, runs: Sequence[RunStats]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results_document(config, runs), indent=2, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
