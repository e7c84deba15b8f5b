"""--request-timeout: one timer per request aborts it (a 503 before any output); requests inside
the limit are not affected."""

from __future__ import annotations

from server_fakes import FakeLoop


def test_timeout_before_output_is_503_and_aborts(make_client) -> None:  # noqa: ANN001
    loop = FakeLoop(step_s=0.05)
    client = make_client(loop, request_timeout=0.3)
    r = client.post("/v2/models/ensemble/generate", json={"text_input": "a", "max_tokens": 100})
    assert r.status_code == 503
    assert "request timeout: not finished within 0.3 s" in r.json()["error"]
    assert len(loop.aborted) == 1


def test_requests_inside_the_timeout_finish_normally(make_client) -> None:  # noqa: ANN001
    client = make_client(FakeLoop(step_s=0.005), request_timeout=5.0)
    r = client.post("/v2/models/ensemble/generate_stream",
                    json={"text_input": "a", "max_tokens": 5, "min_tokens": 5})
    assert r.status_code == 200 and "error" not in r.text
