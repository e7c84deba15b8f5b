"""--request-timeout: one timer per request aborts it (a 503 before any output); requests inside
the limit are not affected. Over the real EngineLoop + Scheduler with a slow fake device."""

from __future__ import annotations

import time
from collections.abc import Callable

from fakes import FakeEngine
from fastapi.testclient import TestClient

MakeClient = Callable[..., TestClient]


def test_timeout_before_output_is_503_and_aborts(make_client: MakeClient) -> None:
    """100 steps of 50 ms would take 5 s: the timer aborts the request in the scheduler, which
    frees its KV blocks and runs no further step for it."""
    engine = FakeEngine(step_s=0.05)
    client = make_client(engine, request_timeout=0.3)
    r = client.post("/v2/models/ensemble/generate", json={"text_input": "a", "max_tokens": 100})
    assert r.status_code == 503
    assert "request timeout: not finished within 0.3 s" in r.json()["error"]
    loop = engine.loop
    assert loop is not None and engine.executor is not None
    assert loop.num_unfinished == 0
    steps = len(engine.executor.plans)
    assert steps < 20, steps
    time.sleep(0.2)
    assert len(engine.executor.plans) <= steps + 1  # at most the step in flight at the abort
    assert loop.scheduler.allocator.num_free == engine.executor.num_blocks


def test_requests_inside_the_timeout_finish_normally(make_client: MakeClient) -> None:
    client = make_client(FakeEngine(step_s=0.005), request_timeout=5.0)
    r = client.post("/v2/models/ensemble/generate_stream",
                    json={"text_input": "a", "max_tokens": 5, "min_tokens": 5})
    assert r.status_code == 200 and "error" not in r.text
