"""OpenAI-compatible routes over the real EngineLoop + Scheduler (tests/fakes.py's FakeEngine)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from fakes import IM_START, REPLY


def _chunks(text: str) -> list:
    parts = [p[len("data: "):] for p in text.split("\n\n") if p]
    assert parts[-1] == "[DONE]"
    return [json.loads(p) for p in parts[:-1]]


def test_models(client: TestClient) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "fake-model"


def test_completion_greedy_by_default_with_usage(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "ab", "max_tokens": 4})
    d = r.json()
    assert d["object"] == "text_completion" and d["choices"][0]["text"] == REPLY[:4].decode()
    assert d["choices"][0]["finish_reason"] == "length"
    assert d["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert client.engine.added[-1].params.temperature == 0.0  # type: ignore[attr-defined]


def test_completion_stream_matches(client: TestClient) -> None:
    body = {"model": "fake-model", "prompt": "ab", "max_tokens": len(REPLY), "stream": True,
            "stream_options": {"include_usage": True}, "seed": 3, "stop": ["zz"], "ignore_eos": True,
            "min_tokens": 2, "temperature": 0.7}
    r = client.post("/v1/completions", json=body)
    chunks = _chunks(r.text)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == REPLY.decode()
    assert chunks[-1]["usage"]["completion_tokens"] == len(REPLY)
    p = client.engine.added[-1].params  # type: ignore[attr-defined]
    assert (p.seed, p.stop, p.ignore_eos, p.min_tokens, p.temperature) == (3, ("zz",), True, 2, 0.7)


def test_chat_template_and_plain_text_content(client: TestClient) -> None:
    msgs = [{"role": "user", "content": "<|im_start|>hi"}]
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": msgs,
                                                  "max_tokens": 2, "logprobs": True})
    d = r.json()
    assert d["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
    assert len(d["choices"][0]["logprobs"]["content"]) == 2
    ids = client.engine.added[-1].prompt_token_ids  # type: ignore[attr-defined]
    assert ids.count(IM_START) == 2  # template's own markers only, not the user's text


def test_chat_stream(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "stream": True,
                    "messages": [{"role": "user", "content": "x"}], "max_tokens": 3})
    chunks = _chunks(r.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hi "
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body", [
    {"model": "fake-model", "prompt": "a", "n": 2},
    {"model": "fake-model", "prompt": "a", "max_tokens": "10"},
    {"model": "fake-model", "prompt": "a", "max_tokens": 0},
    {"model": "fake-model", "prompt": "a", "temperature": 3},
    {"model": "fake-model", "prompt": "a", "top_p": 0},
    {"model": "fake-model", "prompt": "a", "best_of": 5},
    {"model": "fake-model", "prompt": ["a", "b"]},
    {"model": "fake-model"},
    {"model": "fake-model", "messages": []},
    {"prompt": "a"},
])
def test_openai_400(client: TestClient, body: dict) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def test_unknown_model_404(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "gpt-9", "prompt": "a"})
    assert r.status_code == 404
