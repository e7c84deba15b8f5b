"""Triton generate / generate_stream over the real EngineLoop + Scheduler (tests/fakes.py's
FakeEngine: a fake device speaking REPLY): shapes, semantics, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fakes import REPLY, FakeEngine, FakeTokenizer, scripted_logprob
from fastapi.testclient import TestClient

GEN = "/v2/models/ensemble/generate"
STREAM = "/v2/models/ensemble/generate_stream"
MakeClient = Callable[..., TestClient]


def _events(text: str) -> list[dict]:
    assert text.endswith("\n\n")
    chunks = text.split("\n\n")[:-1]
    assert all(c.startswith("data: ") for c in chunks), chunks
    return [json.loads(c[len("data: "):]) for c in chunks]


def test_readme_curl_body_form_encoded(client: TestClient) -> None:
    """The guide's body works with curl's default form content type; Triton's flat shape."""
    body = '{"text_input": "What is machine learning?", "max_tokens": 5, "bad_words": "", "stop_words": ""}'
    r = client.post(GEN, content=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    raw = r.content.decode()
    assert raw.startswith('{"model_name":"ensemble","model_version":"1","sequence_end":false,'
                          '"sequence_id":0,"sequence_start":false,"text_output":')
    data = r.json()
    assert list(data) == sorted(data)
    assert data["text_output"] == "What is machine learning?" + REPLY[:5].decode()


def test_exclude_input_and_id_echo(client: TestClient) -> None:
    r = client.post(GEN, json={"text_input": "q", "max_tokens": 3, "id": "abc",
                               "parameters": {"exclude_input_in_output": True}})
    assert r.status_code == 200
    assert r.json() == {"id": "abc", "model_name": "ensemble", "model_version": "1",
                        "sequence_end": False, "sequence_id": 0, "sequence_start": False,
                        "text_output": "Hi "}


def test_stream_concat_equals_nonstream_with_utf8(make_client: MakeClient) -> None:
    """Deltas never split a multi-byte char; concat == non-stream text (exclude_input). Steps
    of 20 ms: the stream has time to send most tokens on their own."""
    client = make_client(FakeEngine(step_s=0.02))
    n = len(REPLY)
    body = {"text_input": "x", "max_tokens": n, "exclude_input_in_output": True}
    whole = client.post(GEN, json=body).json()["text_output"]
    r = client.post(STREAM, json=dict(body, stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    texts = [e["text_output"] for e in events]
    assert "".join(texts) == whole == REPLY.decode()
    assert all("\ufffd" not in t for t in texts)
    assert len(events) > 5
    assert "[DONE]" not in r.text


def test_stream_without_stream_flag_is_one_event_with_prompt(client: TestClient) -> None:
    r = client.post(STREAM, json={"text_input": "ab", "max_tokens": 2})
    events = _events(r.text)
    assert len(events) == 1 and events[0]["text_output"] == "abHi"


def test_logprobs_scalar_or_list(client: TestClient) -> None:
    r = client.post(GEN, json={"text_input": "a", "max_tokens": 3, "return_log_probs": True,
                               "return_num_output_tokens": True})
    d = r.json()
    want = [scripted_logprob(REPLY, i) for i in range(3)]  # what the scheduler computes
    assert d["output_log_probs"] == pytest.approx(want, rel=1e-3, abs=1e-6)
    assert d["cum_log_probs"] == pytest.approx(sum(d["output_log_probs"]))
    assert d["num_output_tokens"] == 3
    r = client.post(GEN, json={"text_input": "a", "max_tokens": 1, "return_log_probs": True})
    assert r.json()["output_log_probs"] == pytest.approx(want[0], rel=1e-3, abs=1e-6)


def test_default_is_greedy_and_aliases(client: TestClient) -> None:
    client.post(GEN, json={"text_input": "a", "max_tokens": 2, "temperature": 0.9,
                           "min_length": 2, "random_seed": 7, "end_id": 5, "pad_id": 6,
                           "stop_words": ["x", ""], "bad_words": "Hi"})
    p = client.engine.added[-1].params  # type: ignore[attr-defined]
    assert p.temperature == 0.0 and p.min_tokens == 2 and p.seed == 7
    assert p.end_ids == (5,) and p.pad_id == 6 and p.stop == ("x",)
    assert p.bad_words_ids == ((72, 105), (32, 72, 105))  # alone and mid-sentence forms
    client.post(GEN, json={"text_input": "a", "max_tokens": 2, "top_k": 5, "temperature": 0.5})
    p = client.engine.added[-1].params  # type: ignore[attr-defined]
    assert (p.temperature, p.top_k, p.top_p) == (0.5, 5, 1.0)


def test_special_tokens_parsed_in_text_input(client: TestClient) -> None:
    client.post(GEN, json={"text_input": "<|im_start|>user", "max_tokens": 1})
    ids = client.engine.added[-1].prompt_token_ids  # type: ignore[attr-defined]
    assert ids[:2] == [256, 258]


def test_versions_and_aliases(client: TestClient) -> None:
    body = {"text_input": "a", "max_tokens": 1}
    assert client.post("/v2/models/ensemble/versions/1/generate", json=body).status_code == 200
    assert client.post("/v2/models/tensorrt_llm_bls/generate", json=body).status_code == 200
    assert client.post("/v2/models/fake-model/generate", json=body).status_code == 200
    r = client.post("/v2/models/ensemble/versions/2/generate", json=body)
    assert r.status_code == 404 and "version 2 is not found" in r.json()["error"]
    r = client.post("/v2/models/foo/generate", json=body)
    assert r.status_code == 404
    assert r.json() == {"error": "Request for unknown model: 'foo' is not found"}


def test_endpoint_load_metrics_header(client: TestClient) -> None:
    body = {"text_input": "a", "max_tokens": 1}
    r = client.post(GEN, json=body, headers={"endpoint-load-metrics-format": "text"})
    assert r.headers["endpoint-load-metrics"].startswith(
        "TEXT named_metrics.kv_cache_utilization=")
    r = client.post(GEN, json=body, headers={"endpoint-load-metrics-format": "json"})
    data = json.loads(r.headers["endpoint-load-metrics"][len("JSON "):])
    assert data["named_metrics"]["max_token_capacity"] == 64 * 16
    assert "endpoint-load-metrics" not in client.post(GEN, json=body).headers


class SlowTokenizer(FakeTokenizer):
    """Tokenising takes longer than the request timeout (a prep pool swamped by long prompts)."""

    def encode(self, text: str, **kwargs: bool) -> list[int]:
        time.sleep(0.3)
        return super().encode(text, **kwargs)


def test_queue_timeout_is_503_not_500(make_client: MakeClient) -> None:
    """The request's deadline passes before it reaches the scheduler, which refuses it with its
    queue timeout (RELIABILITY §7.17): both routes answer 503 with the scheduler's message."""
    client = make_client(FakeEngine(tokenizer=SlowTokenizer()), request_timeout=0.1)
    for route in ("generate", "generate_stream"):
        r = client.post(f"/v2/models/ensemble/{route}", json={"text_input": "a", "max_tokens": 4})
        assert r.status_code == 503, (route, r.text)
        assert "waited in the queue past its deadline" in r.json()["error"], r.text
    assert client.engine.loop.num_unfinished == 0  # type: ignore[attr-defined]
