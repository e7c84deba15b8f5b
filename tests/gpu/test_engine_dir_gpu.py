"""On the GPU machine: a TensorRT engine directory built for another GPU is refused by
`trtserve serve --engine-dir` with one line (on the H200/H100: TensorRT for RTX does not run
sm_90), before any model loads.
Skipped without a GPU (fails instead with TRTSERVE_REQUIRE_GPU=1). Run on the device with
`python -m pytest tests/gpu/test_engine_dir_gpu.py -q`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.device.cuda import CudaContext

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "server.cli"]


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_tensorrt_engine_for_another_gpu_is_refused_in_one_line(cuda_ctx: CudaContext,
                                                                tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    major, minor = cuda_ctx.compute_capability
    other = "sm86" if (major, minor) != (8, 6) else "sm89"
    out = tmp_path / "trt"
    built = _run("build", "--backend", "tensorrt", "--dtype", "float16", "--max-batch-size",
                 "8", "--max-model-len", "512", "--gpu-arch", other, "--output-dir", str(out))
    assert built.returncode == 0, built.stderr[-3000:]
    assert (out / "rank0.engine").is_file() and (out / "config.json").is_file()
    served = _run("serve", "--engine-dir", str(out), "--port", "0", "--metrics-port", "0",
                  timeout=120)
    assert served.returncode == 2, served.stderr[-3000:]
    errors = [ln for ln in served.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, served.stderr
    sys.stderr.write(errors[0] + "\n")  # the line itself, for the lease log
    assert f"sm{major}{minor}" in errors[0] and "TensorRT" in errors[0]
    if (major, minor) == (9, 0):  # H100/H200: the runtime has no sm_90 at all
        assert "is not one TensorRT for RTX" in errors[0]
    assert "loaded" not in served.stderr
