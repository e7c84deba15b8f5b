"""`trtserve bench` against the real embedded server: its counts agree with /metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .fake_server import free_port

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = float(os.environ.get("TRTSERVE_TEST_READY_S", "300"))

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / "server" / "cli" / "serve.py").exists(),
                       reason="server/cli/serve.py (trtserve serve) not written yet"),
]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not ready in {READY_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "TRTSERVE_METRICS_PORT": "0"}
    cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples by (exposed name, labels); read as written (no `_total` renaming)."""
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def _total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def test_sweep_agrees_with_server_metrics(real_server: str, tmp_path: Path) -> None:
    """Requests and output tokens the bench counted (from the stream) match the server's own
    Prometheus counters within 1%; the JSON and the PNG are written and readable."""
    from server.cli.main import main

    before = _scrape(real_server)
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["bench", "--url", real_server, "--model", "ensemble", "--concurrency", "1,4",
               "--num-prompts", "8", "--input-len", "32", "--output-len", "16",
               "--output-json", str(out_json), "--plot", str(out_png), "--no-progress"])
    after = _scrape(real_server)
    assert rc == 0
    runs = json.loads(out_json.read_text())["runs"]
    assert [r["failed"] for r in runs] == [0, 0], runs
    completed = sum(r["completed"] for r in runs)
    out_tokens = sum(r["total_output_tokens"] for r in runs)
    assert completed == 16

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    assert delta("nv_inference_request_success", model="ensemble") == completed
    server_out = delta("nv_llm_output_token_len_sum", response_metric_type="total_output_tokens")
    assert server_out == pytest.approx(16 * 16, rel=0.01)
    assert out_tokens == pytest.approx(server_out, rel=0.01)
    in_tokens = delta("nv_llm_input_token_len_sum", response_metric_type="total_input_tokens")
    assert sum(r["total_input_tokens"] for r in runs) == pytest.approx(in_tokens, rel=0.01)
    with Image.open(out_png) as img:
        img.verify()


def test_two_client_procs_agree_with_one_and_the_server(real_server: str,
                                                         tmp_path: Path) -> None:
    """--client-procs 2 against the real server: the same requests and output tokens as one
    process (same seed, same prompts), and the server counted exactly those."""
    from server.cli.main import main

    docs = {}
    for procs in ("1", "2"):
        before = _scrape(real_server)
        out_json = tmp_path / f"procs{procs}.json"
        rc = main(["bench", "--url", real_server, "--model", "ensemble", "--concurrency", "4",
                   "--num-prompts", "8", "--input-len", "24", "--output-len", "12",
                   "--client-procs", procs, "--output-json", str(out_json), "--no-progress"])
        after = _scrape(real_server)
        assert rc == 0
        (run,) = json.loads(out_json.read_text())["runs"]
        assert (run["completed"], run["failed"]) == (8, 0), run
        served = (_total(after, "nv_inference_request_success", model="ensemble")
                  - _total(before, "nv_inference_request_success", model="ensemble"))
        assert served == 8
        docs[procs] = run
    assert docs["2"]["total_output_tokens"] == docs["1"]["total_output_tokens"]
    assert docs["2"]["total_input_tokens"] == docs["1"]["total_input_tokens"] == 8 * 24
    assert docs["2"]["ttft_ms"]["count"] == 8
