"""GPU fixtures: skip (with the reason) when cuda-python or a CUDA device is missing; with
TRTSERVE_REQUIRE_GPU=1 (set by run_on_device.sh) a missing GPU or CUDA EP fails instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.device.cuda import CudaContext, Stream, gpu_available

from .tiny_model import build_graph


def skip_or_fail(reason: str) -> None:
    """Skip where a GPU is optional (CI); fail on the GPU machine, where it must be there."""
    if os.environ.get("TRTSERVE_REQUIRE_GPU") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cuda_ctx() -> Iterator[CudaContext]:
    reason = gpu_available()
    if reason is not None:
        skip_or_fail(f"no usable CUDA GPU: {reason}")
    ctx = CudaContext(0)
    yield ctx
    ctx.close()


@pytest.fixture()
def stream(cuda_ctx: CudaContext) -> Iterator[Stream]:
    cuda_ctx.make_current()
    with Stream() as s:
        yield s


@pytest.fixture(scope="session")
def tiny_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model in float32 (the CPU reference executor), float16 and bfloat16 (GPU);
    "<dtype>+decode": RoPE as the op, so with the decode graph (model_decode.onnx) that
    ONNX Runtime CUDA runs decode buckets and single-sequence steps through."""
    root = tmp_path_factory.mktemp("tiny_graphs")
    graphs = {dtype: build_graph(root / dtype, dtype)
              for dtype in ("float32", "float16", "bfloat16")}
    for dtype in ("float16", "bfloat16"):
        graphs[f"{dtype}+decode"] = build_graph(root / f"{dtype}-decode", dtype, rotary_op=True)
    return graphs


@pytest.fixture()
def fake_host_ort(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The cuda-python fake device, with onnxruntime CPU standing in for the CUDA EP."""
    pytest.importorskip("cuda.bindings", reason="the fake reuses cuda-python's enum types")
    from .fake_cuda import install_fake

    yield install_fake(monkeypatch, host_ort_cuda=True)


@pytest.fixture(scope="module")
def tiny_fp16_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_graph(tmp_path_factory.mktemp("tiny") / "float16", "float16")
