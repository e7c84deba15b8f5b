"""Triton-style metric families: counters and histograms exposed under their exact names.

prometheus_client renames a counter `x` to `x_total` and adds `x_created` series; Triton (and the
dashboards written for it) use `nv_inference_request_success`, `nv_llm_input_token_len_bucket`...
with neither. These two collectors keep their own state and emit samples named exactly as Triton
does; `fix_counter_headers` then rewrites the `# HELP`/`# TYPE` lines prometheus_client writes for
them, so the exposition reads like Triton's.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

LabelValues = tuple[str, ...]


class ExactCounter(Collector):
    """A labelled counter whose samples carry the family name itself (no `_total`)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def touch(self, *labelvalues: str) -> None:
        """Create the series at 0 if it does not exist yet."""
        key = self._key(labelvalues)
        with self._lock:
            self._values.setdefault(key, 0.0)

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"counter {self.name} can only increase, got {amount}")
        key = self._key(labelvalues)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labelvalues: str) -> float:
        with self._lock:
            return self._values.get(self._key(labelvalues), 0.0)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "counter")
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            metric.add_sample(self.name, dict(zip(self.labelnames, key, strict=True)), value)
        yield metric

    def _key(self, labelvalues: Sequence[str]) -> LabelValues:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labelvalues}")
        return tuple(str(v) for v in labelvalues)


class ExactHistogram(Collector):
    """A labelled histogram with `_bucket`/`_sum`/`_count` series only (no `_created`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        if list(buckets) != sorted(buckets) or not buckets:
            raise ValueError(f"histogram {name}: buckets must be sorted and non-empty")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets) + (math.inf,)
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def touch(self, *labelvalues: str) -> None:
        with self._lock:
            self._series(tuple(labelvalues))

    def observe(self, *labelvalues: str, value: float) -> None:
        with self._lock:
            counts = self._series(tuple(labelvalues))
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    counts[i] += 1
                    break
            self._sums[tuple(labelvalues)] += value

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        with self._lock:
            snapshot = [(k, list(c), self._sums[k]) for k, c in sorted(self._counts.items())]
        for key, counts, total in snapshot:
            labels = dict(zip(self.labelnames, key, strict=True))
            cumulative = 0
            for bound, count in zip(self.bounds, counts, strict=True):
                cumulative += count
                le = "+Inf" if math.isinf(bound) else _format_bound(bound)
                metric.add_sample(self.name + "_bucket", {**labels, "le": le}, cumulative)
            metric.add_sample(self.name + "_count", labels, cumulative)
            metric.add_sample(self.name + "_sum", labels, total)
        yield metric

    def _series(self, key: LabelValues) -> list[int]:
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
        if key not in self._counts:
            self._counts[key] = [0] * len(self.bounds)
            self._sums[key] = 0.0
        return self._counts[key]


def _format_bound(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() else repr(bound)


def fix_counter_headers(text: bytes, counter_names: Sequence[str]) -> bytes:
    """Rename `# HELP x_total`/`# TYPE x_total` to `x` for the exact-name counters."""
    if not counter_names:
        return text
    names = "|".join(re.escape(n) for n in counter_names)
    pattern = re.compile(rb"^# (HELP|TYPE) (" + names.encode() + rb")_total ", re.MULTILINE)
    return pattern.sub(rb"# \1 \2 ", text)
