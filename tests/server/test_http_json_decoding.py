"""Issue 10.2: every JSON decoding failure on every POST route is a 400 with a JSON body."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

POST_ROUTES = ["/v2/models/ensemble/generate", "/v2/models/ensemble/generate_stream",
               "/v1/completions", "/v1/chat/completions", "/v2/repository/index"]
BIG_INT = "9" * 4301  # one digit over Python's int-digits limit
BODIES = {
    "int_digits": b'{"max_tokens":' + BIG_INT.encode() + b'}',
    "int_digits_nested": b'{"parameters":{"x":[' + BIG_INT.encode() + b']}}',
    "bad_utf8": b'{"text_input":"\xff\xfe","max_tokens":1}',
    "truncated_utf8": b'{"text_input":"\xe4\xbd","max_tokens":1}',
    "deep_nesting": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deep_unbalanced": b"[" * 50_000,
    "nesting_101": b'{"a":' + b"[" * 101 + b"]" * 101 + b"}",
    "bom": b'\xef\xbb\xbf{"text_input":"a","max_tokens":1}',
    "nul": b'{"text_input":"a\x00","max_tokens":1}',
}


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize("name", sorted(BODIES))
def test_decoding_failure_is_400(client: TestClient, path: str, name: str) -> None:
    r = client.post(path, content=BODIES[name], headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text[:200])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    msg = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert msg
    if name.startswith("int_digits"):
        assert "4300 digits" in msg, msg


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty"])
def test_triton_float_input_beyond_float_range_is_400(client: TestClient, name: str) -> None:
    body = '{"text_input":"a","max_tokens":1,"%s":1%s}' % (name, "0" * 400)
    r = client.post("/v2/models/ensemble/generate", content=body)
    assert r.status_code == 400, r.text
    assert name in r.json()["error"]
