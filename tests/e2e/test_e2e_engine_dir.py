"""`trtserve build --backend onnxruntime` then `trtserve serve --engine-dir DIR`: the real server
serves the directory as built (nothing rebuilt, its limits adopted); flags above its limits and a
busy port are refused in one line before any model loads."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_proc import ROOT, free_port, running_server

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "server.cli"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("build") / "smollm2-ort"
    proc = subprocess.run([*CLI, "build", "--backend", "onnxruntime", "--max-batch-size", "4",
                           "--max-model-len", "512", "--output-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("built smollm2-135m-instruct for onnxruntime (float32): "
                                  "max batch 4"), proc.stdout
    yield out


def test_build_dir_is_served_as_built(built: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with running_server("--engine-dir", str(built), "--cache-dir", str(cache),
                        log_name="engine-dir") as server:
        body = {"text_input": "The capital of France is", "max_tokens": 4}
        r = httpx.post(server.url + "/v2/models/smollm2-135m-instruct/generate", json=body,
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["text_output"]
        too_long = httpx.post(server.url + "/v2/models/smollm2-135m-instruct/generate",
                              json={"text_input": "a " * 600, "max_tokens": 4}, timeout=60)
        assert too_long.status_code == 400, too_long.text  # the build's max_model_len 512
        log = server.log()
    assert "serving the onnxruntime build in" in log
    assert "building the" not in log  # no graph built
    assert not cache.exists()


def _serve_fails(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run([*CLI, "serve", "--host", "127.0.0.1", "--metrics-port", "0", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stderr, time.monotonic() - started


def test_flags_above_the_build_are_refused_before_loading(built: Path) -> None:
    code, err, _ = _serve_fails("--engine-dir", str(built), "--max-batch-size", "8",
                                "--port", str(free_port()))
    assert code == 2
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and errors[0].endswith(
        "--max-batch-size 8 exceeds the engine's max_batch_size of 4 (built into it by trtserve "
        "build); pass at most 4 or rebuild with a larger --max-batch-size"), err
    assert "loaded" not in err


def test_busy_port_fails_before_the_model_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err, seconds = _serve_fails("--port", str(port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err, err
    assert "building" not in err and "starting" not in err
    assert seconds < 30
