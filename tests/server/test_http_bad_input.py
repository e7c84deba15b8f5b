"""RELIABILITY §7 cases 1-10, 13: bad HTTP input is a 400/404/413 with a JSON body, never a 500,
and the engine is never called (over the real EngineLoop + Scheduler, tests/fakes.py)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

ROUTES = ["/v2/models/ensemble/generate", "/v2/models/ensemble/generate_stream"]


def _post(client: TestClient, path: str, raw: bytes | str, **headers: str):  # noqa: ANN202
    return client.post(path, content=raw, headers={"Content-Type": "application/json", **headers})


def _assert_error(r, status: int, *words: str) -> None:  # noqa: ANN001
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(("body", "words"), [
    ('{"text_input":"hi",', ["parse"]),
    ('{"text_input":123,"max_tokens":5}', ["text_input"]),
    ('{"text_input":"a","max_tokens":5,"stream":"false"}', ["stream"]),
    ('{"text_input":"a","max_tokens":"10"}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":10.0}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":5,"parameters":{"temperature":{}}}', ["temperature"]),
    ('{"text_input":"a","max_tokens":5,"parameters":5}', ["parameters"]),
    ('{"text_input":"a","text_input":"b","max_tokens":5}', ["already exists"]),
    ('{"text_input":"a","max_tokens":5,"parameters":{"max_tokens":6}}', ["already exists"]),
    ('{"text_input":"a","max_tokens":5,"min_length":1,"min_tokens":2}', ["already exists"]),
    ('{"max_tokens":5}', ["text_input"]),
    ('{"text_input":"","max_tokens":5}', ["text_input"]),
    ('', ["missing required"]),
    ('[1,2]', ["object"]),
    ('{"text_input":"a","max_tokens":0}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":-1}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":1000000000000}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":"1e3"}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":[5,6]}', ["max_tokens"]),
    ('{"text_input":"a","max_tokens":5,"temperature":NaN}', ["temperature"]),
    ('{"text_input":"a","max_tokens":5,"temperature":Infinity}', ["temperature"]),
    ('{"text_input":"a","max_tokens":5,"temperature":-1}', ["temperature"]),
    ('{"text_input":"a","max_tokens":5,"top_p":1.5}', ["top_p"]),
    ('{"text_input":"a","max_tokens":5,"top_k":-5}', ["top_k"]),
    ('{"text_input":"a","max_tokens":5,"beam_width":2}', ["beam_width"]),
    ('{"text_input":"a","max_tokens":5,"num_return_sequences":3}', ["num_return_sequences"]),
    ('{"text_input":"a","max_tokens":5,"seed":-1}', ["seed"]),
    ('{"text_input":"a","max_tokens":5,"id":5}', ["id"]),
    ('{"text_input":"a","max_tokens":5,"foo":[1]}', ["foo"]),
    ('{"text_input":"\\ud800","max_tokens":5}', ["text_input"]),
    ('{"text_input":"a","max_tokens":5,"return_context_logits":true}', ["return_context_logits"]),
])
def test_rejected_with_400(client: TestClient, path: str, body: str, words: list[str]) -> None:
    r = _post(client, path, body)
    _assert_error(r, 400, *words)
    assert client.engine.added == []  # type: ignore[attr-defined]


def test_too_long_prompt_is_400_from_scheduler(client: TestClient) -> None:
    """600 characters + BOS: the request reaches the scheduler, which refuses it."""
    r = _post(client, ROUTES[0], json.dumps({"text_input": "a" * 600, "max_tokens": 5}))
    _assert_error(r, 400, "prompt (601 tokens) + max_tokens (5) = 606 exceeds the maximum "
                  "model length 512")
    assert len(client.engine.added) == 1  # type: ignore[attr-defined]
    assert client.engine.loop.num_unfinished == 0  # type: ignore[attr-defined]


def test_unknown_parameter_scalar_is_ignored(client: TestClient) -> None:
    r = _post(client, ROUTES[0], '{"text_input":"a","max_tokens":1,"foo":"bar","baz":1}')
    assert r.status_code == 200


def test_deep_nesting_fast_400(client: TestClient) -> None:
    body = '{"text_input":"a","max_tokens":1,"parameters":{"x":' + "[" * 10000 + "]" * 10000 + "}}"
    t0 = time.monotonic()
    r = _post(client, ROUTES[0], body)
    assert time.monotonic() - t0 < 1.0
    _assert_error(r, 400, "nesting")


def test_invalid_utf8_body(client: TestClient) -> None:
    r = _post(client, ROUTES[0], b'{"text_input":"\xff\xfe","max_tokens":1}')
    _assert_error(r, 400, "UTF-8")


@pytest.mark.parametrize("text", ["emoji 🙂👩‍👩‍👧", "中文", "עברית", "zero\u200dwidth", "nul\u0000x"])
def test_unicode_round_trips(client: TestClient, text: str) -> None:
    r = client.post(ROUTES[0], json={"text_input": text, "max_tokens": 1})
    assert r.status_code == 200
    assert r.json()["text_output"].startswith(text)
    if "\u0000" not in text:  # control characters are escaped, as JSON requires
        assert text.encode() in r.content  # raw UTF-8, not \\u escapes


def test_body_too_large_by_content_length(make_client) -> None:  # noqa: ANN001
    client = make_client(max_body_bytes=2048)
    r = _post(client, ROUTES[0], json.dumps({"text_input": "a" * 5000, "max_tokens": 1}))
    _assert_error(r, 413, "exceeds")


def test_body_too_large_chunked(make_client) -> None:  # noqa: ANN001
    client = make_client(max_body_bytes=2048)

    def chunks():  # noqa: ANN202
        yield b'{"text_input":"'
        for _ in range(100):
            yield b"a" * 100
        yield b'","max_tokens":1}'

    r = client.post(ROUTES[0], content=chunks())
    _assert_error(r, 413, "exceeds")


@pytest.mark.parametrize("path", [
    "/v2/models/..%2F..%2Fetc%2Fpasswd/generate", "/v2/models/m%00/generate",
    "/v2/models/ensemble/versions/../1/generate", "/v2/models/nope/generate", "/nothing"])
def test_model_path_tricks_404(client: TestClient, path: str) -> None:
    r = _post(client, path, '{"text_input":"a","max_tokens":1}')
    assert r.status_code in (400, 404), r.text
    assert "error" in r.json()


def test_wrong_method_405(client: TestClient) -> None:
    r = client.get(ROUTES[0])
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    assert client.get("/v2/nope").json() == {"error": "Not Found"}


def test_server_healthy_after_bad_input(client: TestClient) -> None:
    _post(client, ROUTES[0], '{"text_input":"a","max_tokens":5,"temperature":NaN}')
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(ROUTES[0], json={"text_input": "a", "max_tokens": 1}).status_code == 200


def test_too_many_or_too_large_headers_431(client: TestClient) -> None:
    many = {f"x-h{i}": "v" for i in range(300)}
    r = client.post(ROUTES[0], json={"text_input": "a", "max_tokens": 1}, headers=many)
    _assert_error(r, 431, "header")
    r = client.post(ROUTES[0], json={"text_input": "a", "max_tokens": 1},
                    headers={"x-big": "a" * 100_000})
    _assert_error(r, 431, "header")
