"""RELIABILITY §7.14-15: API key on every non-health route, constant-time compare, CORS off."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

KEY = "s3cret-Key"
BODY = {"text_input": "a", "max_tokens": 1}


@pytest.fixture
def secured(make_client) -> TestClient:  # noqa: ANN001
    return make_client(api_key=KEY)


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY.lower()}"},
    {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}, {"X-Api-Key": KEY},
    {"Authorization": f"Bearer {KEY}x"},
])
@pytest.mark.parametrize("path", ["/v2/models/ensemble/generate", "/v2/models/tensorrt_llm_bls/generate_stream",
                                  "/v2/models/ensemble/versions/1/generate", "//v2/models/ensemble/generate",
                                  "/v1/completions", "/v2/trtserve/stats"])
def test_without_valid_key_401(secured: TestClient, headers: dict, path: str) -> None:
    r = secured.post(path, json=BODY, headers=headers)
    assert r.status_code == 401, r.text
    assert "error" in r.json()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_valid_key_any_scheme_case(secured: TestClient, scheme: str) -> None:
    r = secured.post("/v2/models/ensemble/generate", json=BODY,
                     headers={"Authorization": f"{scheme} {KEY}"})
    assert r.status_code == 200


def test_health_and_metrics_open_options_not_bypass(secured: TestClient) -> None:
    assert secured.get("/v2/health/live").status_code == 200
    assert secured.get("/v2/health/ready").status_code == 200
    assert secured.get("/metrics").status_code == 200
    assert secured.post("/v2/health/ready").status_code == 401
    assert secured.options("/v2/models/ensemble/generate").status_code == 401
    r = secured.post("/v2/models/ensemble/generate", json=BODY, headers={"Host": "x/v2/health/live?"})
    assert r.status_code == 401
    assert secured.get("/v2/health/live?x=/generate", headers={"Host": "evil"}).status_code == 200


def test_cors_off_by_default(client: TestClient) -> None:
    r = client.post("/v2/models/ensemble/generate", json=BODY, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_on_for_listed_origin(make_client) -> None:  # noqa: ANN001
    c = make_client(cors_origins="https://good.example")
    r = c.post("/v2/models/ensemble/generate", json=BODY, headers={"Origin": "https://good.example"})
    assert r.headers["access-control-allow-origin"] == "https://good.example"
    assert "access-control-allow-credentials" not in r.headers
    r = c.post("/v2/models/ensemble/generate", json=BODY, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
