"""Prometheus metrics of the server: Triton's families plus trtserve latency histograms.

`ServerMetrics` owns one `CollectorRegistry` (never the global one, so tests and several servers in
one process do not collide). The registry of live requests (server/request/live.py) sets the
in-flight gauge through `set_in_flight`, each ended request is recorded by `request_finished`,
`observe_step` is the engine loop's `on_step`; `/metrics` serves `exposition()`. docs/metrics.md lists every family.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter as Counter_
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

from scheduler.stats import SchedulerStats
from server.metrics.families import fix_counter_headers
from server.metrics.triton import BACKEND_MODEL, TritonCoreMetrics
from server.metrics.trtllm import TrtLlmMetrics

PREFIX = "trtserve"
# The classic text format generate_latest writes (Triton itself says `text/plain; charset=utf-8`).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def observe_many(hist: Histogram, values: Sequence[float]) -> None:
    """`hist.observe(v)` for every value, as one update per bucket (a request's inter-token
    gaps are recorded at its end: one lock round per bucket, not one per token)."""
    buckets = getattr(hist, "_buckets", None)
    bounds = getattr(hist, "_upper_bounds", None)
    if buckets is None or bounds is None:  # pragma: no cover - another prometheus_client
        for v in values:
            hist.observe(v)
        return
    if not values:
        return
    counts = Counter_(bisect.bisect_left(bounds, v) for v in values)
    for i, n in counts.items():
        buckets[i].inc(n)
    hist._sum.inc(math.fsum(values))  # noqa: SLF001 - observe() does exactly this


@dataclass(slots=True)
class RequestRecord:
    """What the server knows about one finished request (any outcome)."""

    model: str  # the model name the client asked for ("ensemble", "tensorrt_llm_bls", ...)
    ok: bool  # finished without error (stop, length, stop word...)
    failure_reason: str | None  # REJECTED | CANCELED | BACKEND | OTHER when not ok
    # (server/request/outcome.py: ENDINGS)
    queue_s: float  # arrival -> first scheduled
    ttft_s: float | None  # arrival -> first output token (None when none was produced)
    e2e_s: float  # arrival -> last byte of the response
    compute_s: float  # first scheduled -> last token (time spent in the engine)
    num_input_tokens: int  # prompt tokens
    num_output_tokens: int  # generated tokens
    inter_token_s: list[float] = field(default_factory=list)  # gaps between output tokens


class _LatencyMetrics:
    """trtserve_* families: latency histograms and token/step counters, label `model` only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, ["model"], buckets=buckets, registry=registry)

        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between output tokens.", ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Time waiting for a slot.", QUEUE_BUCKETS)
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Requests being served.", ["model"], registry=registry
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Tokens generated.", ["model"], registry=registry
        )
        self.step = Histogram(
            f"{PREFIX}_step_duration_seconds",
            "Wall time of one engine step.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.preemptions = Counter(
            f"{PREFIX}_preemptions", "Sequences preempted (recompute).", registry=registry
        )
        self.prefix_queries = Counter(
            f"{PREFIX}_prefix_cache_queries", "Prompt blocks looked up.", registry=registry
        )
        self.prefix_hits = Counter(
            f"{PREFIX}_prefix_cache_hits", "Prompt blocks found cached.", registry=registry
        )

    def add_model(self, model: str) -> None:
        for family in (self.ttft, self.itl, self.e2e, self.queue, self.in_flight):
            family.labels(model=model)
        self.prompt_tokens.labels(model=model)
        self.generation_tokens.labels(model=model)


class ServerMetrics:
    """All series of one server; thread-safe (prometheus_client and our collectors lock)."""

    def __init__(
        self, model_names: Sequence[str], registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._core = TritonCoreMetrics(self.registry)
        self._trtllm = TrtLlmMetrics(self.registry)
        self._latency = _LatencyMetrics(self.registry)
        self._models: set[str] = set()
        self._lock = threading.Lock()
        self._totals = {"preemptions": 0, "prefix_queries": 0, "prefix_hits": 0}
        self._core.add_model(BACKEND_MODEL)
        for model in model_names:
            self._ensure_model(model)

    def set_in_flight(self, model: str, count: int) -> None:
        """The live requests of `model` (the registry's count, never below 0)."""
        self._ensure_model(model)
        self._latency.in_flight.labels(model=model).set(max(count, 0))

    def request_finished(self, rec: RequestRecord) -> None:
        self._ensure_model(rec.model)
        for model in self._core_models(rec.model):
            if rec.ok:
                self._core.success(model, rec.queue_s, rec.compute_s, rec.e2e_s)
            else:
                self._core.failure(model, rec.failure_reason)
        self._observe_latency(rec)
        if rec.ok:
            self._trtllm.observe_request(rec.num_input_tokens, rec.num_output_tokens)

    def observe_step(self, stats: SchedulerStats) -> None:
        self._trtllm.observe_step(stats)
        self._core.set_pending(BACKEND_MODEL, stats.num_waiting)
        if stats.step_time_s > 0:
            self._latency.step.observe(stats.step_time_s)
        self._advance("preemptions", stats.preemptions_total, self._latency.preemptions)
        lat = self._latency
        self._advance("prefix_queries", stats.prefix_cache_queries_total, lat.prefix_queries)
        self._advance("prefix_hits", stats.prefix_cache_hits_total, self._latency.prefix_hits)

    def exposition(self) -> tuple[bytes, str]:
        names = (*self._core.counter_names, *self._trtllm.counter_names)
        return fix_counter_headers(generate_latest(self.registry), names), CONTENT_TYPE

    async def exposition_async(self) -> tuple[bytes, str]:
        """`exposition()`; a front end of `--api-server-count` asks the engine process."""
        return self.exposition()

    def core_value(self, name: str, model: str) -> float:
        """One `nv_inference_*` counter value (tests, logs)."""
        return self._core.value(name, model, None)

    def _ensure_model(self, model: str) -> None:
        with self._lock:
            if model in self._models:
                return
            self._models.add(model)
        if model != BACKEND_MODEL:
            self._core.add_model(model)
        self._latency.add_model(model)

    @staticmethod
    def _core_models(model: str) -> tuple[str, ...]:
        """A request to a pipeline model (`ensemble`, BLS) also ran the backend model, as in
        Triton where the composing `tensorrt_llm` model reports its own statistics."""
        return (model,) if model == BACKEND_MODEL else (model, BACKEND_MODEL)

    def _observe_latency(self, rec: RequestRecord) -> None:
        lat = self._latency
        if rec.ttft_s is not None:
            lat.ttft.labels(model=rec.model).observe(rec.ttft_s)
        observe_many(lat.itl.labels(model=rec.model), rec.inter_token_s)
        if rec.ok or rec.ttft_s is not None:  # the prompt went through the engine
            lat.prompt_tokens.labels(model=rec.model).inc(max(rec.num_input_tokens, 0))
        lat.generation_tokens.labels(model=rec.model).inc(max(rec.num_output_tokens, 0))
        if rec.ok:
            lat.e2e.labels(model=rec.model).observe(rec.e2e_s)
            lat.queue.labels(model=rec.model).observe(rec.queue_s)

    def _advance(self, key: str, total: int, counter: Counter) -> None:
        """Move a counter to a cumulative total the scheduler reports."""
        with self._lock:
            delta = total - self._totals[key]
            self._totals[key] = max(total, self._totals[key])
        if delta > 0:
            counter.inc(delta)
