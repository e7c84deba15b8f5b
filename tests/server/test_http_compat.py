"""Issue 10, items 5-7, over the real app + real EngineLoop (scripted executor, see
real_engine.py): Triton end_id / `GET /` / HEAD, OpenAI stop trimming / top_logprobs / finish
reasons, CORS preflight body, idle gauges."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import wait_ready
from fastapi.testclient import TestClient
from real_engine import scripted_loader
from server_fakes import EOS

from server.app import create_app
from server.settings import ServerSettings

SCRIPT = "Hello world! STOP here. The end."
MakeApp = Callable[..., TestClient]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    clients: list[TestClient] = []

    def make(script: str | list[int] = SCRIPT, step_s: float = 0.0,
             **settings: object) -> TestClient:
        app = create_app(ServerSettings(model="fake-model", **settings),  # type: ignore[arg-type]
                         scripted_loader(script, step_s))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def app(make_app: MakeApp) -> TestClient:
    return make_app()


def sse(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


# ---- Triton ----------------------------------------------------------------------------------
def test_end_id_past_vocab_streams_exactly_max_tokens(make_app: MakeApp) -> None:
    """end_id 1048576 (>= vocab) with min_tokens = max_tokens = 64: 64 tokens, even though the
    model produces its own EOS early (end_id replaces it, as in TensorRT-LLM)."""
    c = make_app(list(b"Hi ") + [EOS] + list(b"there"))
    body = {"text_input": "a", "max_tokens": 64, "min_tokens": 64, "end_id": 1048576,
            "stream": True, "return_num_output_tokens": True}
    r = c.post("/v2/models/ensemble/generate_stream", json=body)
    assert r.status_code == 200, r.text
    events = sse(r.text)
    assert events[-1]["num_output_tokens"] == 64
    assert "".join(e["text_output"] for e in events) == "Hi there" + "x" * 55  # EOS: no text
    body.pop("stream")
    r = c.post("/v2/models/ensemble/generate", json=dict(body, exclude_input_in_output=True))
    assert r.status_code == 200 and r.json()["num_output_tokens"] == 64
    r = c.post("/v2/models/ensemble/generate", json=dict(body, max_tokens=8, min_tokens=0))
    assert r.status_code == 200 and r.json()["num_output_tokens"] == 8  # the EOS did not stop it


@pytest.mark.parametrize("end_id", [-1, 2**31])
def test_end_id_negative_or_past_int32_is_400(app: TestClient, end_id: int) -> None:
    r = app.post("/v2/models/ensemble/generate",
                 json={"text_input": "a", "max_tokens": 2, "end_id": end_id})
    assert r.status_code == 400 and "end_id" in r.json()["error"]


def test_root_index_and_head_on_health(app: TestClient) -> None:
    r = app.get("/")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    index = r.json()
    assert index["name"] == "trtserve" and index["version"] and index["ready"] is True
    paths = {route["path"] for route in index["routes"]}
    assert {"/v2/health/ready", "/v2/models/{model_name}/generate_stream",
            "/v1/chat/completions"} <= paths
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v2/models/ensemble/ready",
                 "/v2/models/ensemble/versions/1/ready"):
        r = app.head(path)
        assert r.status_code == 200, path
        assert r.content == b""


# ---- small items -----------------------------------------------------------------------------
def test_cors_refused_preflight_is_json(make_app: MakeApp) -> None:
    c = make_app(cors_origins="https://good.example")
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = c.options("/v2/models/ensemble/generate", headers=headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert "origin" in r.json()["error"]
    ok = c.options("/v2/models/ensemble/generate",
                   headers=dict(headers, Origin="https://good.example"))
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://good.example"


def _gauge(metrics: str, family: str, label: str) -> float:
    prefix = f'{family}{{'
    for line in metrics.splitlines():
        if line.startswith(prefix) and f'"{label}"' in line:
            return float(line.split()[-1])
    raise AssertionError(f"{family} {label} not found")


def test_scheduled_and_generation_gauges_zero_when_idle(app: TestClient) -> None:
    r = app.post("/v2/models/ensemble/generate", json={"text_input": "a", "max_tokens": 6})
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while True:
        m = app.get("/metrics").text
        values = (_gauge(m, "nv_trt_llm_request_metrics", "scheduled"),
                  _gauge(m, "nv_trt_llm_inflight_batcher_metrics", "generation_requests"),
                  _gauge(m, "nv_trt_llm_request_metrics", "active"))
        if values == (0, 0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert values == (0, 0, 0)
    assert _gauge(m, "nv_trt_llm_general_metrics", "iteration_counter") >= 6
