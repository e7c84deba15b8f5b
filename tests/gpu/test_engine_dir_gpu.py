"""On the GPU machine (H200/H100, sm_90), `trtserve serve --engine-dir`:

- refuses a TensorRT-for-RTX engine directory built on a machine without a GPU in one line
  (TensorRT for RTX does not run sm_90), before any model loads. The directory is the one built on
  the CPU machine and carried over (TRTSERVE_PREBUILT_TRT_DIR), else one built here with the GPU
  hidden from the build (CUDA_VISIBLE_DEVICES=""), as on a machine without one;
- serves an ONNX Runtime build directory with no rebuild: no graph-build log line, the cache root
  never created, every file of the directory unchanged, a generate request answered on the GPU.

Skipped without a GPU (fails instead with TRTSERVE_REQUIRE_GPU=1). tests/gpu/run_engine_dir_check.sh
runs it on the device in one lease."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.device.cuda import CudaContext

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "server.cli"]
PREBUILT = "TRTSERVE_PREBUILT_TRT_DIR"


def _run(*args: str, timeout: float = 900, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file: a rebuild or rewrite changes them."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _trt_dir_built_without_gpu(tmp_path: Path) -> Path:
    prebuilt = os.environ.get(PREBUILT)
    if prebuilt:
        return Path(prebuilt)
    out = tmp_path / "trt"
    built = _run("build", "--backend", "tensorrt", "--dtype", "float16", "--max-batch-size", "8",
                 "--max-model-len", "512", "--output-dir", str(out),
                 env={"CUDA_VISIBLE_DEVICES": ""})
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_rtx_engine_built_without_a_gpu_is_refused_in_one_line(cuda_ctx: CudaContext,
                                                               tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    major, minor = cuda_ctx.compute_capability
    out = _trt_dir_built_without_gpu(tmp_path)
    assert (out / "rank0.engine").is_file() and (out / "config.json").is_file()
    started = time.monotonic()
    served = _run("serve", "--engine-dir", str(out), "--port", str(_free_port()),
                  "--metrics-port", "0", timeout=120)
    seconds = time.monotonic() - started
    assert served.returncode == 2, served.stderr[-3000:]
    errors = [ln for ln in served.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, served.stderr
    sys.stderr.write(f"refused in {seconds:.1f}s: {errors[0]}\n")  # for the lease log
    assert f"sm{major}{minor}" in errors[0] and "TensorRT for RTX" in errors[0]
    if (major, minor) == (9, 0):  # H100/H200: TensorRT for RTX has no sm_90 at all
        assert "is not one TensorRT for RTX" in errors[0] and "runs on" in errors[0]
    assert "loaded" not in served.stderr and "starting" not in served.stderr


def test_onnxruntime_build_is_served_on_the_gpu_without_rebuild(cuda_ctx: CudaContext,
                                                                tmp_path: Path) -> None:
    out, cache = tmp_path / "ort", tmp_path / "cache"
    built = _run("build", "--backend", "onnxruntime", "--dtype", "float16", "--max-batch-size",
                 "8", "--max-model-len", "512", "--output-dir", str(out))
    assert built.returncode == 0, built.stderr[-3000:]
    before = _snapshot(out)
    port = _free_port()
    log_path = tmp_path / "serve.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*CLI, "serve", "--engine-dir", str(out), "--cache-dir",
                                 str(cache), "--host", "127.0.0.1", "--port", str(port),
                                 "--metrics-port", "0"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            ready = _wait_ready(proc, f"http://127.0.0.1:{port}", log_path)
            r = httpx.post(f"http://127.0.0.1:{port}/v2/models/smollm2-135m-instruct/generate",
                           json={"text_input": "The capital of France is", "max_tokens": 8},
                           timeout=60)
        finally:
            proc.terminate()
            proc.wait(60)
    text = log_path.read_text(errors="replace")
    sys.stderr.write(f"ready {ready - started:.1f}s after start; {r.status_code} {r.text[:200]}\n")
    assert r.status_code == 200 and r.json()["text_output"], r.text
    assert "serving the onnxruntime build in" in text and "onnxruntime-cuda" in text, text[-3000:]
    assert "building the" not in text, text[-3000:]  # no graph built
    assert not cache.exists()  # nothing cached, nothing rebuilt into the cache root
    assert _snapshot(out) == before  # the build directory untouched


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> float:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"not ready in 300 s: {log_path.read_text()[-3000:]}")
