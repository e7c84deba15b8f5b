"""ServerMetrics: exact sample values, Triton names/labels, and a valid exposition."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from scheduler.stats import SchedulerStats
from server.metrics.server_metrics import RequestRecord, ServerMetrics
from server.metrics.triton import FAILURE_REASONS
from server.metrics.trtllm import (
    GENERAL_TYPES,
    IFB_TYPES,
    KV_BLOCK_TYPES,
    MEMORY_TYPES,
    REQUEST_TYPES,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')
CORE_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def parse(text: bytes) -> tuple[Samples, dict[str, str]]:
    """Samples keyed by (exact sample name, labels) and family -> TYPE, as written."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            types[name] = typ
        elif line and not line.startswith("#"):
            match = _LINE.match(line)
            assert match, f"unparsable sample line {line!r}"
            labels = frozenset(_LABEL.findall(match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"missing series {name}{labels}"
    return samples[key]


def make_metrics(*models: str) -> ServerMetrics:
    return ServerMetrics(list(models) or ["ensemble"], registry=CollectorRegistry())


def make_record(**overrides: object) -> RequestRecord:
    rec = RequestRecord(
        model="ensemble",
        ok=True,
        failure_reason=None,
        queue_s=0.25,
        ttft_s=0.5,
        e2e_s=2.0,
        compute_s=1.5,
        num_input_tokens=20,
        num_output_tokens=120,
        inter_token_s=[0.01, 0.03, 0.2],
    )
    return replace(rec, **overrides)


def make_stats(**overrides: object) -> SchedulerStats:
    stats = SchedulerStats(
        step_id=7,
        num_running=5,
        num_waiting=3,
        num_context_requests=1,
        num_generation_requests=3,
        num_scheduled_tokens=67,
        max_batch_size=64,
        max_num_tokens=2048,
        blocks_total=200,
        blocks_free=150,
        blocks_used=50,
        blocks_cached=10,
        tokens_per_block=16,
        preemptions_total=4,
        prefix_cache_queries_total=12,
        prefix_cache_hits_total=9,
        requests_completed_total=30,
        step_time_s=0.02,
    )
    return replace(stats, **overrides)


def scrape(metrics: ServerMetrics) -> tuple[Samples, dict[str, str]]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return parse(body)


def test_every_labelled_family_present_at_startup() -> None:
    """Before any request or step, every Triton series exists at 0 for every known model."""
    samples, types = scrape(make_metrics("ensemble", "tensorrt_llm_bls"))
    for model in ("ensemble", "tensorrt_llm_bls", "tensorrt_llm"):
        for name in CORE_COUNTERS:
            assert types[name] == "counter"
            assert value(samples, name, model=model, version="1") == 0
        for reason in FAILURE_REASONS:
            failure = value(
                samples, "nv_inference_request_failure", model=model, reason=reason, version="1"
            )
            assert failure == 0
        assert value(samples, "nv_inference_pending_request_count", model=model, version="1") == 0
    families = {
        "nv_trt_llm_request_metrics": ("request_type", REQUEST_TYPES),
        "nv_trt_llm_runtime_memory_metrics": ("memory_type", MEMORY_TYPES),
        "nv_trt_llm_kv_cache_block_metrics": ("kv_cache_block_type", KV_BLOCK_TYPES),
        "nv_trt_llm_inflight_batcher_metrics": ("inflight_batcher_specific_metric", IFB_TYPES),
        "nv_trt_llm_general_metrics": ("general_type", GENERAL_TYPES),
    }
    for family, (category, label_values) in families.items():
        assert types[family] == "gauge"
        for label in label_values:
            value(samples, family, **{category: label}, model="tensorrt_llm", version="1")
    assert types["nv_trt_llm_disaggregated_serving_metrics"] == "counter"
    assert types["nv_llm_input_token_len"] == "histogram"
    assert types["nv_llm_output_token_len"] == "histogram"
    for name in ("time_to_first_token", "inter_token_latency", "e2e_request_latency"):
        hist = f"trtserve_{name}_seconds"
        assert types[hist] == "histogram"
        assert value(samples, hist + "_count", model="ensemble") == 0


def test_triton_counters_keep_exact_names() -> None:
    """No `_total`/`_created` renaming of Triton's families, and label keys exactly as Triton's."""
    body, _ = make_metrics().exposition()
    text = body.decode()
    assert "nv_inference_request_success_total" not in text
    assert "nv_inference_request_success_created" not in text
    assert "nv_llm_input_token_len_created" not in text
    assert "# TYPE nv_inference_request_success counter" in text
    line = 'nv_inference_request_success{model="ensemble",version="1"} 0.0'
    assert line in text.splitlines()


def test_success_moves_core_counters_for_model_and_backend() -> None:
    """A successful ensemble request counts once under `ensemble` and once under tensorrt_llm."""
    metrics = make_metrics()
    metrics.request_finished(make_record())
    metrics.request_finished(make_record(queue_s=0.75, e2e_s=4.0, compute_s=3.0))
    samples, _ = scrape(metrics)
    for model in ("ensemble", "tensorrt_llm"):
        labels = {"model": model, "version": "1"}
        assert value(samples, "nv_inference_request_success", **labels) == 2
        assert value(samples, "nv_inference_count", **labels) == 2
        assert value(samples, "nv_inference_exec_count", **labels) == 2
        assert value(samples, "nv_inference_request_duration_us", **labels) == 6_000_000
        assert value(samples, "nv_inference_queue_duration_us", **labels) == 1_000_000
        assert value(samples, "nv_inference_compute_infer_duration_us", **labels) == 4_500_000
        assert value(samples, "nv_inference_compute_output_duration_us", **labels) == 500_000
        assert value(samples, "nv_inference_compute_input_duration_us", **labels) == 0
    assert metrics.core_value("nv_inference_request_success", "ensemble") == 2


def test_direct_backend_request_counts_once() -> None:
    """A request addressed to tensorrt_llm itself is not double counted."""
    metrics = make_metrics()
    metrics.request_finished(make_record(model="tensorrt_llm"))
    samples, _ = scrape(metrics)
    labels = {"model": "tensorrt_llm", "version": "1"}
    assert value(samples, "nv_inference_request_success", **labels) == 1
    assert value(samples, "nv_inference_request_success", model="ensemble", version="1") == 0


@pytest.mark.parametrize("reason", [*FAILURE_REASONS, None, "BOGUS"])
def test_failure_counts_under_its_reason(reason: str | None) -> None:
    """Failures move only their reason's series (unknown reasons go to OTHER), never success."""
    metrics = make_metrics()
    metrics.request_finished(
        make_record(ok=False, failure_reason=reason, ttft_s=None, inter_token_s=[])
    )
    samples, _ = scrape(metrics)
    expected_reason = reason if reason in FAILURE_REASONS else "OTHER"
    for model in ("ensemble", "tensorrt_llm"):
        for r in FAILURE_REASONS:
            got = value(samples, "nv_inference_request_failure", model=model, reason=r, version="1")
            assert got == (1 if r == expected_reason else 0)
        assert value(samples, "nv_inference_request_success", model=model, version="1") == 0
    assert value(samples, "trtserve_e2e_request_latency_seconds_count", model="ensemble") == 0
    assert value(samples, "nv_llm_input_token_len_count", **_backend("total_input_tokens")) == 0


def _backend(metric_type: str) -> dict[str, str]:
    return {"model": "tensorrt_llm", "response_metric_type": metric_type, "version": "1"}


def test_token_length_histograms_use_triton_buckets() -> None:
    """Input/output lengths land in Triton's 10/50/100/500/1000 buckets, cumulatively."""
    metrics = make_metrics()
    metrics.request_finished(make_record(num_input_tokens=20, num_output_tokens=120))
    metrics.request_finished(make_record(num_input_tokens=5, num_output_tokens=2000))
    samples, _ = scrape(metrics)
    inp, out = _backend("total_input_tokens"), _backend("total_output_tokens")
    expected_in = {"10": 1, "50": 2, "100": 2, "500": 2, "1000": 2, "+Inf": 2}
    expected_out = {"10": 0, "50": 0, "100": 0, "500": 1, "1000": 1, "+Inf": 2}
    for le, count in expected_in.items():
        assert value(samples, "nv_llm_input_token_len_bucket", **inp, le=le) == count
    for le, count in expected_out.items():
        assert value(samples, "nv_llm_output_token_len_bucket", **out, le=le) == count
    assert value(samples, "nv_llm_input_token_len_sum", **inp) == 25
    assert value(samples, "nv_llm_output_token_len_count", **out) == 2


def test_latency_histograms_move_after_records() -> None:
    """TTFT, every inter-token gap, e2e and queue time are observed in seconds per model."""
    metrics = make_metrics()
    metrics.request_finished(make_record())
    samples, _ = scrape(metrics)
    ttft = "trtserve_time_to_first_token_seconds"
    itl = "trtserve_inter_token_latency_seconds"
    assert value(samples, ttft + "_count", model="ensemble") == 1
    assert value(samples, ttft + "_sum", model="ensemble") == 0.5
    assert value(samples, ttft + "_bucket", model="ensemble", le="0.25") == 0
    assert value(samples, ttft + "_bucket", model="ensemble", le="0.5") == 1
    assert value(samples, itl + "_count", model="ensemble") == 3
    assert value(samples, itl + "_bucket", model="ensemble", le="0.01") == 1
    assert value(samples, itl + "_bucket", model="ensemble", le="0.04") == 2
    assert value(samples, "trtserve_e2e_request_latency_seconds_sum", model="ensemble") == 2.0
    assert value(samples, "trtserve_request_queue_time_seconds_sum", model="ensemble") == 0.25
    assert value(samples, "trtserve_generation_tokens_total", model="ensemble") == 120
    assert value(samples, "trtserve_prompt_tokens_total", model="ensemble") == 20


def test_in_flight_gauge_is_the_registry_count() -> None:
    """The in-flight gauge is what the registry of live requests says (set_in_flight), never
    negative, and a finished record does not move it."""
    metrics = make_metrics()
    metrics.set_in_flight("ensemble", 2)
    metrics.request_finished(make_record())
    samples, _ = scrape(metrics)
    assert value(samples, "trtserve_requests_in_flight", model="ensemble") == 2
    metrics.set_in_flight("ensemble", -1)
    metrics.set_in_flight("my-model", 3)
    samples, _ = scrape(metrics)
    assert value(samples, "trtserve_requests_in_flight", model="ensemble") == 0
    assert value(samples, "trtserve_requests_in_flight", model="my-model") == 3


def test_unknown_model_gets_series_on_first_use() -> None:
    """A model not passed to the constructor gets its full set of series when first seen."""
    metrics = make_metrics()
    metrics.request_finished(make_record(model="my-model", ok=False, failure_reason="CANCELED"))
    samples, _ = scrape(metrics)
    labels = {"model": "my-model", "version": "1"}
    assert value(samples, "nv_inference_request_success", **labels) == 0
    assert value(samples, "nv_inference_request_failure", **labels, reason="CANCELED") == 1
    assert value(samples, "nv_inference_request_failure", **labels, reason="OTHER") == 0


def _trt(samples: Samples, family: str, category: str, label: str) -> float:
    labels = {category: label, "model": "tensorrt_llm", "version": "1"}
    return value(samples, family, **labels)


def test_observe_step_sets_trt_llm_gauges() -> None:
    """Each SchedulerStats maps onto the nv_trt_llm_* gauges as docs/metrics.md says."""
    metrics = make_metrics()
    metrics.observe_step(make_stats(preemptions_total=1))
    metrics.observe_step(make_stats())
    samples, _ = scrape(metrics)
    req = {"active": 8, "max": 64, "scheduled": 4, "context": 1, "waiting": 4}
    for label, expected in req.items():
        assert _trt(samples, "nv_trt_llm_request_metrics", "request_type", label) == expected
    kv = {"max": 200, "free": 150, "used": 50, "tokens_per": 16, "reused": 9, "fraction": 0.25}
    for label, expected in kv.items():
        got = _trt(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", label)
        assert got == expected
    ifb = {"total_context_tokens": 64, "generation_requests": 3, "micro_batch_id": 0}
    ifb["paused_requests"] = 3  # preemptions since the previous step: 4 - 1
    for label, expected in ifb.items():
        family, category = "nv_trt_llm_inflight_batcher_metrics", "inflight_batcher_specific_metric"
        assert _trt(samples, family, category, label) == expected
    general = "nv_trt_llm_general_metrics"
    assert _trt(samples, general, "general_type", "iteration_counter") == 7
    assert _trt(samples, general, "general_type", "timestamp") > 1.7e15  # µs since epoch
    pending = "nv_inference_pending_request_count"
    assert value(samples, pending, model="tensorrt_llm", version="1") == 3
    assert value(samples, pending, model="ensemble", version="1") == 0
    assert value(samples, "trtserve_preemptions_total") == 4
    assert value(samples, "trtserve_prefix_cache_hits_total") == 9
    assert value(samples, "trtserve_step_duration_seconds_count") == 2


def test_empty_pool_fraction_is_zero() -> None:
    """No KV pool yet (0 blocks) gives fraction 0, not a division error."""
    metrics = make_metrics()
    metrics.observe_step(make_stats(blocks_total=0, blocks_free=0, blocks_used=0))
    samples, _ = scrape(metrics)
    got = _trt(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "fraction")
    assert got == 0


def test_registries_are_independent() -> None:
    """Two ServerMetrics in one process neither collide nor share values."""
    first, second = make_metrics(), ServerMetrics(["ensemble"])
    first.request_finished(make_record())
    assert first.core_value("nv_inference_request_success", "ensemble") == 1
    assert second.core_value("nv_inference_request_success", "ensemble") == 0


# promtool's lint insists on `_total` and base units; Triton's own names break both rules.
_TRITON_LINT = re.compile(
    r'^nv_\w+ (counter metrics should have "_total" suffix'
    r"|metric names should not contain abbreviated units"
    r'|non-histogram and non-summary metrics should not have "_count" suffix)$'
)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (make tools)")
def test_promtool_accepts_exposition() -> None:
    """`promtool check metrics` parses the exposition; lint findings only for Triton's names."""
    metrics = make_metrics("ensemble", "tensorrt_llm_bls")
    metrics.request_finished(make_record())
    metrics.request_finished(make_record(ok=False, failure_reason="CANCELED"))
    metrics.observe_step(make_stats())
    body, _ = metrics.exposition()
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    findings = [ln for ln in (proc.stdout + proc.stderr).decode().splitlines() if ln.strip()]
    assert proc.returncode in (0, 3), findings  # 1 = parse error
    unexpected = [ln for ln in findings if not _TRITON_LINT.match(ln)]
    assert not unexpected, unexpected
