"""The GPU executors' device bookkeeping, run on CPU over a host-memory fake of cuda-python
(tests/gpu/fake_cuda.py): staging offsets, argument packing, kernel index math, block copies,
logits copy-back and the release of every allocation. onnxruntime CPU stands in for the CUDA EP
by binding the same raw pointers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.device import cuda, kernels, memory
from engine.device.step_io import StepLimits
from engine.executors import ort_cuda
from engine.executors.ort import OrtExecutor, session_options
from scheduler.plan import ScheduledSeq, StepPlan

from .tiny_model import BLOCK_SIZE, TINY, build_graph
from .workload import lockstep

FP16_TOLERANCE = 1e-2
NUM_BLOCKS = 64


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    pytest.importorskip("cuda.bindings", reason="the fake reuses cuda-python's enum types")
    from .fake_cuda import FakeCuda

    fake = FakeCuda()
    for module in (cuda, memory, kernels):
        monkeypatch.setattr(module, "bindings", fake.bindings)
    yield fake


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {d: build_graph(root / d, d) for d in ("float32", "float16")}


class HostOrtExecutor(ort_cuda.OrtCudaExecutor):
    ORT_DEVICE = "cpu"


def _host_executor(path: Path, monkeypatch: pytest.MonkeyPatch) -> HostOrtExecutor:
    import onnxruntime as ort

    monkeypatch.setattr(ort_cuda, "_session", lambda p, d: ort.InferenceSession(
        str(p), sess_options=session_options(1), providers=["CPUExecutionProvider"]))
    return HostOrtExecutor(path, TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                           max_context=TINY.max_position_embeddings,
                           limits=StepLimits(64, 8, TINY.max_position_embeddings))


def test_device_executor_matches_cpu_and_frees_everything(
        fake: object, graphs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefill + 10 decodes + a block move through the device path: logits within fp16
    tolerance, the pool equal to the CPU pool, kernels launched, nothing left allocated."""
    ref = OrtExecutor(graphs["float32"], TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                      max_context=TINY.max_position_embeddings)
    dut = _host_executor(graphs["float16"], monkeypatch)
    errors = lockstep(ref, dut, vocab=TINY.vocab_size, block_size=BLOCK_SIZE,
                      num_blocks=NUM_BLOCKS, decode_steps=10)
    assert max(errors) < FP16_TOLERANCE, errors
    io = dut.device_io
    pool = np.empty(io.geometry.shape, np.float16)
    io.pool.buffer.copy_to_host(pool, io.stream)
    want = ref.pool.data
    assert np.abs(pool.astype(np.float32) - want).max() < FP16_TOLERANCE * np.abs(want).max()
    assert fake.launches.count("kv_scatter_f16") == 12  # type: ignore[attr-defined]
    assert fake.launches.count("kv_block_copy_f16") == 1  # type: ignore[attr-defined]
    dut.close()
    dut.close()
    assert fake.allocations == {}  # type: ignore[attr-defined]


def test_rows_without_logits_and_copy_only_steps(fake: object, graphs: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that wants no logits returns [0, vocab]; a seq-less step still copies blocks."""
    dut = _host_executor(graphs["float16"], monkeypatch)
    try:
        chunk = ScheduledSeq(0, [1, 2, 3, 4, 5], 0, [9, 3], want_logits=False)
        assert dut.execute(StepPlan(0, [chunk])).logits.shape == (0, TINY.vocab_size)
        dut.execute(StepPlan(1, [], [(9, 20)]))
        io = dut.device_io
        pool = np.empty(io.geometry.shape, np.float16)
        io.pool.buffer.copy_to_host(pool, io.stream)
        np.testing.assert_array_equal(pool[:, :, :, 20], pool[:, :, :, 9])
        assert np.abs(pool[:, :, :, 9]).max() > 0
        with pytest.raises(ValueError, match="block id outside"):
            dut.execute(StepPlan(2, [ScheduledSeq(1, [1], 0, [NUM_BLOCKS], True)]))
    finally:
        dut.close()
    assert fake.allocations == {}  # type: ignore[attr-defined]
