"""Issue 10, items 5-7, over the real app + real EngineLoop (tests/fakes.py's FakeEngine speaking
SCRIPT): Triton end_id / `GET /` / HEAD, OpenAI stop trimming / top_logprobs / finish
reasons, CORS preflight body, idle gauges."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
from fakes import EOS, FakeEngine, serving
from fastapi.testclient import TestClient


SCRIPT = "Hello world! STOP here. The end."
MakeApp = Callable[..., TestClient]


@pytest.fixture
def make_app(make_client: Callable[..., TestClient]) -> MakeApp:
    def make(script: str | list[int] = SCRIPT, step_s: float = 0.0,
             **settings: object) -> TestClient:
        return make_client(FakeEngine(script, step_s=step_s), **settings)
    return make


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


# ---- OpenAI: stop strings ----------------------------------------------------------------------
def _completion(c: TestClient, stream: bool, **body: object) -> tuple[str, str | None, list[str]]:
    """(text, finish_reason, the streamed deltas) of one /v1/completions call."""
    body = {"model": "fake-model", "prompt": "a", "max_tokens": 40, "stream": stream, **body}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    if not stream:
        choice = r.json()["choices"][0]
        return choice["text"], choice["finish_reason"], [choice["text"]]
    chunks = [e["choices"][0] for e in sse(r.text) if e.get("choices")]
    deltas = [ch["text"] for ch in chunks]
    return "".join(deltas), chunks[-1]["finish_reason"], deltas


def _chat(c: TestClient, stream: bool, **body: object) -> tuple[str, str | None, list[str]]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "a"}],
            "max_tokens": 40, "stream": stream, **body}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if not stream:
        choice = r.json()["choices"][0]
        return choice["message"]["content"], choice["finish_reason"], []
    chunks = [e["choices"][0] for e in sse(r.text) if e.get("choices")]
    deltas = [ch["delta"].get("content") or "" for ch in chunks]
    return "".join(deltas), chunks[-1]["finish_reason"], deltas


@pytest.mark.parametrize("call", [_completion, _chat])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_trimmed_from_output(app: TestClient, call: Callable, stream: bool) -> None:
    text, finish, deltas = call(app, stream, stop=["STOP"])
    assert (text, finish) == ("Hello world! ", "stop")
    if stream:  # "S", "ST", "STO" were held back, never sent
        assert not any("S" in d for d in deltas), deltas
    text, finish, _ = call(app, stream, stop=["zzz", " here."], include_stop_str_in_output=True)
    assert (text, finish) == ("Hello world! STOP here.", "stop")


@pytest.mark.parametrize("call", [_completion, _chat])
def test_held_back_prefix_released(app: TestClient, call: Callable) -> None:
    """Text that looked like the start of a stop string is sent once it is not one, and at the
    end of a request that stopped for length."""
    text, finish, deltas = call(app, True, stop=["world?"])
    assert text == SCRIPT + "x" * 8 and finish == "length"
    assert "Hello world!" in "".join(deltas[:14]), deltas
    text, finish, deltas = call(app, True, stop=["The end?"], max_tokens=30)
    assert text == SCRIPT[:30] and finish == "length"
    assert text.endswith(" The en") and deltas[-1] == "The en"  # held, released at the end


# ---- OpenAI: top_logprobs ---------------------------------------------------------------------
def test_completions_top_logprobs(app: TestClient) -> None:
    body = {"model": "fake-model", "prompt": "a", "max_tokens": 5, "logprobs": 3}
    for stream in (False, True):
        r = app.post("/v1/completions", json=dict(body, stream=stream))
        assert r.status_code == 200, r.text
        events = [r.json()] if not stream else [e for e in sse(r.text) if e.get("choices")]
        tokens, lps, tops = [], [], []
        for e in events:
            lp = e["choices"][0]["logprobs"]
            tokens += lp["tokens"]
            lps += lp["token_logprobs"]
            tops += lp["top_logprobs"]
        assert "".join(tokens) == "Hello"
        assert len(tops) == 5
        for tok, lp, top in zip(tokens, lps, tops, strict=True):
            assert isinstance(top, dict) and 3 <= len(top) <= 4
            assert max(top, key=top.get) == tok and top[tok] == lp  # the script token is likeliest
            assert all(v <= lp for v in top.values())
    r = app.post("/v1/completions", json=dict(body, logprobs=0))
    lp = r.json()["choices"][0]["logprobs"]
    assert [list(d) for d in lp["top_logprobs"]] == [[t] for t in lp["tokens"]]  # chosen only


def test_chat_top_logprobs(app: TestClient) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "a"}],
            "max_tokens": 4, "logprobs": True, "top_logprobs": 2}
    r = app.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == "Hell"
    for c in content:
        assert len(c["top_logprobs"]) == 2
        first, second = c["top_logprobs"]
        assert first == {"token": c["token"], "logprob": c["logprob"], "bytes": c["bytes"]}
        assert second["logprob"] < first["logprob"] and set(second) == {"token", "logprob", "bytes"}


@pytest.mark.parametrize(("route", "extra"), [
    ("/v1/completions", {"prompt": "a", "logprobs": 21}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "logprobs": True,
                              "top_logprobs": 21}),
])
def test_bad_logprob_counts_400(app: TestClient, route: str, extra: dict) -> None:
    r = app.post(route, json={"model": "fake-model", "max_tokens": 2, **extra})
    assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]


# ---- OpenAI: finish reasons ------------------------------------------------------------------
def test_aborted_request_is_an_error_not_a_finish_reason() -> None:
    """A request the server aborts (e.g. the engine loop stopping) gets an OpenAI error object,
    never finish_reason "abort"."""
    async def main() -> list[httpx.Response]:
        async with serving(FakeEngine(SCRIPT, step_s=0.01)) as (app, client):
            loop = app.state.trtserve.lifecycle.model.loop
            body = {"model": "fake-model", "prompt": "a", "max_tokens": 200}
            calls = [client.post("/v1/completions", json=dict(body, stream=s)) for s in (False, True)]
            calls.append(client.post("/v1/chat/completions", json={
                "model": "fake-model", "messages": [{"role": "user", "content": "a"}],
                "max_tokens": 200, "stream": True}))
            tasks = [asyncio.create_task(c) for c in calls]
            while len(loop.scheduler.request_ids()) < 3:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            for rid in loop.scheduler.request_ids():
                loop.abort(rid)
            return list(await asyncio.gather(*tasks))

    whole, stream, chat = asyncio.run(asyncio.wait_for(main(), 30))
    assert whole.status_code == 503 and whole.json()["error"]["type"] == "server_error"
    for r in (stream, chat):
        assert r.status_code == 200
        events = sse(r.text)
        assert "\"abort\"" not in r.text
        assert events[-1]["error"]["message"] and r.text.rstrip().endswith("data: [DONE]")
        assert all(e["choices"][0]["finish_reason"] is None for e in events if e.get("choices"))
