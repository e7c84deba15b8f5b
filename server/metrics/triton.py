"""The Triton core per-model families (`nv_inference_*`), docs/triton-generate.md §4.1.

Counters use Triton's exact names (no `_total`), durations are cumulative microseconds, and every
`reason` of `nv_inference_request_failure` exists at 0 from start-up for every known model.
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge
from prometheus_client.registry import CollectorRegistry

from server.metrics.families import ExactCounter

logger = logging.getLogger(__name__)

MODEL_VERSION = "1"
BACKEND_MODEL = "tensorrt_llm"  # the composing model that runs the engine, as in Triton
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_US = 1e6

# name -> HELP text, as Triton core writes them (src/metrics.cc)
_COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed (does not include cached "
    "requests)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds "
    "(includes cached requests)",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds "
    "(includes cached requests)",
    "nv_inference_compute_input_duration_us": "Cumulative compute input duration in microseconds "
    "(does not include cached requests)",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in "
    "microseconds (does not include cached requests)",
    "nv_inference_compute_output_duration_us": "Cumulative inference compute output duration in "
    "microseconds (does not include cached requests)",
}
FAILURE_COUNTER = "nv_inference_request_failure"
PENDING_GAUGE = "nv_inference_pending_request_count"


class TritonCoreMetrics:
    """`nv_inference_*` series per model (label `model` = the name the client asked for)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version")
        self._counters = {
            name: ExactCounter(name, doc, labels, registry) for name, doc in _COUNTERS.items()
        }
        self._failure = ExactCounter(
            FAILURE_COUNTER,
            "Number of failed inference requests, all batch sizes",
            ("model", "reason", "version"),
            registry,
        )
        self._pending = Gauge(
            PENDING_GAUGE,
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels,
            registry=registry,
        )
        self._pending_children: dict[str, Gauge] = {}

    @property
    def counter_names(self) -> tuple[str, ...]:
        return (*self._counters, FAILURE_COUNTER)

    def add_model(self, model: str) -> None:
        """Create every series of `model` at 0 (Triton does so when a model loads)."""
        for counter in self._counters.values():
            counter.touch(model, MODEL_VERSION)
        for reason in FAILURE_REASONS:
            self._failure.touch(model, reason, MODEL_VERSION)
        self._pending.labels(model=model, version=MODEL_VERSION).set(0)

    def success(self, model: str, queue_s: float, compute_s: float, e2e_s: float) -> None:
        """One successful request of batch size 1, as TRT-LLM's `reportBaseMetrics` reports it.

        The request duration is split into queue + compute infer + compute output, where compute
        output is whatever the engine time does not cover (detokenization, response writing).
        """
        queue_s, compute_s, e2e_s = max(queue_s, 0.0), max(compute_s, 0.0), max(e2e_s, 0.0)
        output_s = max(e2e_s - queue_s - compute_s, 0.0)
        self._inc(model, "nv_inference_request_success", 1)
        self._inc(model, "nv_inference_count", 1)
        self._inc(model, "nv_inference_exec_count", 1)
        self._inc(model, "nv_inference_request_duration_us", e2e_s * _US)
        self._inc(model, "nv_inference_queue_duration_us", queue_s * _US)
        self._inc(model, "nv_inference_compute_input_duration_us", 0.0)
        self._inc(model, "nv_inference_compute_infer_duration_us", compute_s * _US)
        self._inc(model, "nv_inference_compute_output_duration_us", output_s * _US)

    def failure(self, model: str, reason: str | None) -> None:
        if reason not in FAILURE_REASONS:
            logger.debug("unknown failure reason %r for model %s counted as OTHER", reason, model)
            reason = "OTHER"
        self._failure.inc(model, reason, MODEL_VERSION)

    def set_pending(self, model: str, value: int) -> None:
        """Called every engine step: the labelled child is looked up once per model."""
        child = self._pending_children.get(model)
        if child is None:
            child = self._pending_children[model] = self._pending.labels(model=model,
                                                                         version=MODEL_VERSION)
        child.set(value)

    def value(self, name: str, model: str, reason: str | None = None) -> float:
        """Current value of one counter series (for tests and logs)."""
        if name == FAILURE_COUNTER:
            return self._failure.value(model, reason or "OTHER", MODEL_VERSION)
        return self._counters[name].value(model, MODEL_VERSION)

    def _inc(self, model: str, name: str, amount: float) -> None:
        self._counters[name].inc(model, MODEL_VERSION, amount=amount)
