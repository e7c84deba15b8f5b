"""The real server on the embedded SmolLM2 over real HTTP: Triton routes."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
from server_proc import ServerProc

pytestmark = pytest.mark.e2e


def _events(text: str) -> list[dict]:
    return [json.loads(c[len("data: "):]) for c in text.split("\n\n") if c]


def test_readme_curl_verbatim(server: ServerProc) -> None:
    """The original guide's curl command works and the response has Triton's shape."""
    body = ('{"text_input": "What is machine learning?", "max_tokens": 20, "bad_words": "", '
            '"stop_words": ""}')
    url = f"{server.url}/v2/models/ensemble/generate"
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-X", "POST", url, "-d", body], check=True,
                             capture_output=True, timeout=120).stdout
    else:
        out = httpx.post(url, content=body, timeout=120,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}).content
    data = json.loads(out)
    assert list(data) == ["model_name", "model_version", "sequence_end", "sequence_id",
                          "sequence_start", "text_output"]
    assert data["model_name"] == "ensemble" and data["model_version"] == "1"
    assert (data["sequence_end"], data["sequence_id"], data["sequence_start"]) == (False, 0, False)
    assert data["text_output"].startswith("What is machine learning?")
    assert len(data["text_output"]) > len("What is machine learning?") + 10


def test_stream_concat_equals_generate(server: ServerProc) -> None:
    body = {"text_input": "Write a haiku about the sea, with an emoji 🌊:", "max_tokens": 24,
            "exclude_input_in_output": True}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        whole = c.post("/v2/models/ensemble/generate", json=body).json()["text_output"]
        r = c.post("/v2/models/ensemble/generate_stream", json=dict(body, stream=True))
        default = c.post("/v2/models/ensemble/generate",
                         json={k: v for k, v in body.items() if k != "exclude_input_in_output"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert len(events) > 3
    assert "".join(e["text_output"] for e in events) == whole
    assert all("\ufffd" not in e["text_output"] for e in events)
    assert default.json()["text_output"] == body["text_input"] + whole


def test_bad_input_through_uvicorn(server: ServerProc) -> None:
    """Checks that depend on the real HTTP stack: Content-Length/chunked limits, headers."""
    url = f"{server.url}/v2/models/ensemble/generate"
    with httpx.Client(timeout=30) as c:
        r = c.post(url, content=b'{"text_input":"hi",')
        assert r.status_code == 400 and "error" in r.json()
        r = c.post(url, content=b"x" * (5 * 1024 * 1024))
        assert r.status_code == 413 and "error" in r.json()

        def chunked():  # noqa: ANN202
            for _ in range(100):
                yield b"a" * 65536

        r = c.post(url, content=chunked())
        assert r.status_code == 413
        r = c.post(url, content=b'{"text_input":"a","max_tokens":1}',
                   headers={"X-Big": "a" * 100_000})
        assert r.status_code in (400, 431)
        r = c.post(url, json={"text_input": "a", "max_tokens": 10_000_000})
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]
        assert c.get(f"{server.url}/v2/health/ready").status_code == 200


def test_metrics_port_serves_registry(server: ServerProc) -> None:
    m = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert m.status_code == 200
    assert b"nv_trt_llm_kv_cache_block_metrics" in m.content
    assert b"nv_inference_request_success" in httpx.get(server.url + "/metrics").content


def test_stop_and_bad_words(server: ServerProc) -> None:
    body = {"text_input": "What is machine learning?", "max_tokens": 14,
            "exclude_input_in_output": True}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        plain = c.post("/v2/models/ensemble/generate", json=body).json()["text_output"]
        assert " subset" in plain and "intelligence" in plain  # greedy SmolLM2 answer
        stopped = c.post("/v2/models/ensemble/generate",
                         json=dict(body, stop_words=["intelligence"])).json()["text_output"]
        banned = c.post("/v2/models/ensemble/generate",
                        json=dict(body, bad_words=["subset"])).json()["text_output"]
    assert stopped.endswith("intelligence") and len(stopped) < len(plain)
    assert "subset" not in banned


def test_end_id_past_vocab_streams_full_length(server: ServerProc) -> None:
    """Benchmark clients send end_id >= vocab with min_tokens = max_tokens to force full-length
    outputs: exactly 64 tokens stream (and the non-stream route returns 64)."""
    body = {"text_input": "Say hi.", "max_tokens": 64, "min_tokens": 64, "end_id": 1048576,
            "return_num_output_tokens": True}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = c.post("/v2/models/ensemble/generate_stream", json=dict(body, stream=True))
        whole = c.post("/v2/models/ensemble/generate", json=body)
        root = c.get("/")
        head = c.head("/v2/health/ready")
    assert r.status_code == 200, r.text
    events = _events(r.text)
    assert events[-1]["num_output_tokens"] == 64 and "error" not in events[-1]
    assert whole.status_code == 200 and whole.json()["num_output_tokens"] == 64
    assert root.status_code == 200 and root.json()["ready"] is True
    assert head.status_code == 200 and head.content == b""
