"""The real server with the CLI options users of vLLM/TGI expect: several --served-model-name,
--chat-template FILE, --log-format json with one line per finished request, a periodic stats
line while busy, uvicorn's start lines once and "listening on" once both listeners accept
connections (health answers while the model loads: readiness tells when it is loaded)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_proc import ServerProc, running_server

pytestmark = pytest.mark.e2e
TEMPLATE = "X{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    template = tmp_path_factory.mktemp("tpl") / "chat.jinja"
    template.write_text(TEMPLATE)
    with running_server("--served-model-name", "llama-alias", "second-name",
                        "--chat-template", str(template), "--log-format", "json",
                        "--stats-interval", "0.2", log_name="cli-logs") as proc:
        yield proc


def _records(server: ServerProc) -> list[dict[str, object]]:
    lines = Path(server.log_path).read_text(errors="replace").splitlines()
    return [json.loads(ln) for ln in lines if ln.startswith("{")]


def test_served_model_names(server: ServerProc) -> None:
    models = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in models] == ["llama-alias"]
    for name in ("llama-alias", "second-name"):
        r = httpx.post(server.url + "/v1/completions", json={
            "model": name, "prompt": "Hello", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.post(server.url + f"/v2/models/{name}/generate", json={
            "text_input": "Hello", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
    r = httpx.post(server.url + "/v1/completions", json={
        "model": "smollm2-135m-instruct", "prompt": "Hello", "max_tokens": 2}, timeout=60)
    assert r.status_code == 404


def test_chat_template_file_replaces_the_models(server: ServerProc) -> None:
    """The model's own template adds a system prompt (tens of tokens); ours adds one "X"."""
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "llama-alias", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] <= 4


def test_json_logs_request_lines_stats_and_start_lines(server: ServerProc) -> None:
    for _ in range(3):
        httpx.post(server.url + "/v2/models/ensemble/generate", json={
            "text_input": "Count to ten:", "max_tokens": 24}, timeout=60)
    records = _records(server)
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    done = [r for r in records if r["logger"] == "trtserve.requests"]
    line = next(r for r in done if r["route"] == "POST /v2/models/ensemble/generate")
    assert line["model"] == "ensemble" and line["prompt_tokens"] == 4
    assert 0 < int(line["output_tokens"]) <= 24  # type: ignore[call-overload]
    assert line["finish_reason"] in ("length", "end_id")
    assert isinstance(line["ttft_ms"], float) and line["e2e_ms"] >= line["ttft_ms"]
    assert len(str(line["request_id"])) == 32
    stats = [r for r in records if r["logger"] == "trtserve.stats"]
    assert stats and {"running", "waiting", "kv_cache_usage", "tokens_per_s"} <= set(stats[0])
    msgs = [str(r["msg"]) for r in records]
    assert sum(m.startswith("Started server process") for m in msgs) == 1
    assert not any(m.startswith("Uvicorn running on") for m in msgs)
    listening = [i for i, m in enumerate(msgs) if m.startswith("listening on")]
    started = [i for i, m in enumerate(msgs) if m.startswith("Started server process")]
    assert len(listening) == 1 and started[0] < listening[0]  # after uvicorn bound and serves
