"""KServe v2 health/metadata shapes (docs/triton-generate.md §3)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_health_empty_bodies(client: TestClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/ensemble/ready",
                 "/v2/models/ensemble/versions/1/ready"):
        r = client.get(path)
        assert r.status_code == 200 and r.content == b"", path


def test_server_and_model_metadata(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "triton" and "extensions" in meta
    m = client.get("/v2/models/ensemble").json()
    assert list(m) == ["name", "versions", "platform", "inputs", "outputs"]
    assert m["versions"] == ["1"] and m["platform"] == "ensemble"
    assert {"name": "text_input", "datatype": "BYTES", "shape": [-1, 1]} in m["inputs"]
    assert client.get("/v2/models/ensemble/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/ensemble/versions/3").status_code == 404


def test_infer_is_501_for_decoupled(client: TestClient) -> None:
    r = client.post("/v2/models/ensemble/infer", json={"inputs": []})
    assert r.status_code == 501 and "decoupled" in r.json()["error"]
    assert client.post("/v2/models/nope/infer", json={}).status_code == 404


def test_config(client: TestClient) -> None:
    c = client.get("/v2/models/ensemble/config").json()
    assert c["model_transaction_policy"] == {"decoupled": True}
    assert c["max_batch_size"] == 64 and c["name"] == "ensemble"
    assert any(i["name"] == "max_tokens" and i["data_type"] == "TYPE_INT32" for i in c["input"])


def test_repository_index(client: TestClient) -> None:
    assert client.get("/v2/repository/index").status_code == 405
    idx = client.post("/v2/repository/index").json()
    assert {"name": "ensemble", "version": "1", "state": "READY"} in idx
    assert client.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400


def test_metrics_on_main_port(client: TestClient) -> None:
    client.post("/v2/models/ensemble/generate", json={"text_input": "a", "max_tokens": 2})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert b'nv_inference_request_success{model="ensemble",version="1"} 1.0' in r.content
