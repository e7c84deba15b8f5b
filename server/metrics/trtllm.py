"""The TensorRT-LLM backend families (`nv_trt_llm_*`, `nv_llm_*`), docs/triton-generate.md §4.2.

Every series carries `model="tensorrt_llm"`, `version="1"` and one category label; every category
value exists from start-up. Gauges are *set* from each `SchedulerStats`; the token-length
histograms are observed once per finished request.
"""

from __future__ import annotations

import os
import time

from prometheus_client import Gauge
from prometheus_client.registry import CollectorRegistry

from scheduler.stats import SchedulerStats
from server.metrics.families import ExactCounter, ExactHistogram
from server.metrics.triton import BACKEND_MODEL, MODEL_VERSION

REQUEST_TYPES = ("active", "max", "scheduled", "context", "waiting")
MEMORY_TYPES = ("cpu", "gpu", "pinned")
KV_BLOCK_TYPES = ("max", "free", "used", "tokens_per", "reused", "fraction")
IFB_TYPES = ("total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests")
GENERAL_TYPES = ("iteration_counter", "timestamp")
DISAGG_TYPES = ("kv_cache_transfer_ms", "request_count")
TOKEN_LEN_BUCKETS = (10, 50, 100, 500, 1000)
RSS_PERIOD_S = 1.0  # the process-memory gauge reads /proc at most this often
DISAGG_COUNTER = "nv_trt_llm_disaggregated_serving_metrics"

# family -> (category label, its values, HELP text as the backend writes it)
_GAUGES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "nv_trt_llm_request_metrics": ("request_type", REQUEST_TYPES, "TRT LLM request metrics"),
    "nv_trt_llm_runtime_memory_metrics": (
        "memory_type",
        MEMORY_TYPES,
        "TRT LLM runtime memory metrics",
    ),
    "nv_trt_llm_kv_cache_block_metrics": (
        "kv_cache_block_type",
        KV_BLOCK_TYPES,
        "TRT LLM KV cache block metrics",
    ),
    "nv_trt_llm_inflight_batcher_metrics": (
        "inflight_batcher_specific_metric",
        IFB_TYPES,
        "TRT LLM inflight_batcher-specific metrics",
    ),
    "nv_trt_llm_general_metrics": ("general_type", GENERAL_TYPES, "General TRT LLM metrics"),
}


class TrtLlmMetrics:
    """Backend families filled from `SchedulerStats` and from finished requests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges: dict[str, Gauge] = {}
        # labelled children, looked up once: `labels()` validates and locks on every call, and
        # observe_step sets ~17 of them per engine step on the event loop beside the forward pass
        self._children: dict[tuple[str, str], Gauge] = {}
        for name, (category, values, doc) in _GAUGES.items():
            gauge = Gauge(name, doc, (category, "model", "version"), registry=registry)
            for value in values:
                gauge.labels(value, BACKEND_MODEL, MODEL_VERSION).set(0)
            self._gauges[name] = gauge
        self._disagg = ExactCounter(
            DISAGG_COUNTER,
            "TRT LLM disaggregated serving metrics",
            ("disaggregated_serving_type", "model", "version"),
            registry,
        )
        for value in DISAGG_TYPES:
            self._disagg.touch(value, BACKEND_MODEL, MODEL_VERSION)
        self._input_len = self._token_histogram("nv_llm_input_token_len", registry)
        self._output_len = self._token_histogram("nv_llm_output_token_len", registry)
        self._input_len.touch("total_input_tokens", BACKEND_MODEL, MODEL_VERSION)
        self._output_len.touch("total_output_tokens", BACKEND_MODEL, MODEL_VERSION)
        self._last_preemptions = 0
        self._rss_read_at = -RSS_PERIOD_S

    @property
    def counter_names(self) -> tuple[str, ...]:
        return (DISAGG_COUNTER,)

    def observe_step(self, stats: SchedulerStats) -> None:
        scheduled = stats.num_context_requests + stats.num_generation_requests
        active = stats.num_running + stats.num_waiting
        self._set_all(
            "nv_trt_llm_request_metrics",
            active=active,
            max=stats.max_batch_size,
            scheduled=scheduled,
            context=stats.num_context_requests,
            waiting=max(active - scheduled, 0),
        )
        fraction = stats.blocks_used / stats.blocks_total if stats.blocks_total else 0.0
        self._set_all(
            "nv_trt_llm_kv_cache_block_metrics",
            max=stats.blocks_total,
            free=stats.blocks_free,
            used=stats.blocks_used,
            tokens_per=stats.tokens_per_block,
            reused=stats.prefix_cache_hits_total,
            fraction=fraction,
        )
        paused = max(stats.preemptions_total - self._last_preemptions, 0)
        self._last_preemptions = stats.preemptions_total
        self._set_all(
            "nv_trt_llm_inflight_batcher_metrics",
            total_context_tokens=max(stats.num_scheduled_tokens - stats.num_generation_requests, 0),
            generation_requests=stats.num_generation_requests,
            micro_batch_id=0,
            paused_requests=paused,
        )
        self._set_all(
            "nv_trt_llm_general_metrics",
            iteration_counter=stats.step_id,
            timestamp=int(time.time() * 1e6),
        )
        now = time.monotonic()
        if now - self._rss_read_at >= RSS_PERIOD_S:  # /proc once a second, not per step
            self._rss_read_at = now
            self._set("nv_trt_llm_runtime_memory_metrics", "cpu", _process_rss_bytes())

    def observe_request(self, num_input_tokens: int, num_output_tokens: int) -> None:
        self._input_len.observe(
            "total_input_tokens", BACKEND_MODEL, MODEL_VERSION, value=num_input_tokens
        )
        self._output_len.observe(
            "total_output_tokens", BACKEND_MODEL, MODEL_VERSION, value=num_output_tokens
        )

    def _set_all(self, family: str, **values: float) -> None:
        for label, value in values.items():
            self._set(family, label, value)

    def _set(self, family: str, label: str, value: float) -> None:
        child = self._children.get((family, label))
        if child is None:
            child = self._gauges[family].labels(label, BACKEND_MODEL, MODEL_VERSION)
            self._children[family, label] = child
        child.set(value)

    @staticmethod
    def _token_histogram(name: str, registry: CollectorRegistry) -> ExactHistogram:
        return ExactHistogram(
            name,
            "TRT LLM response metrics",
            ("response_metric_type", "model", "version"),
            TOKEN_LEN_BUCKETS,
            registry,
        )


def _process_rss_bytes() -> int:
    """Resident memory of this process (Linux); 0 where /proc is not available."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
