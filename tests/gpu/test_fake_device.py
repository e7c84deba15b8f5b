"""The GPU executors' device bookkeeping, run on CPU over a host-memory fake of cuda-python
(tests/gpu/fake_cuda.py): staging offsets, argument packing, kernel index math, block copies,
logits copy-back and the release of every allocation. onnxruntime CPU stands in for the CUDA EP
by binding the same raw pointers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

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
    from .fake_cuda import install_fake

    yield install_fake(monkeypatch)


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


class _OrtBackedTrtContext:
    """Stands in for trt.IExecutionContext: same calls, runs onnxruntime CPU on the addresses."""

    def __init__(self, graph: Path, fake: object = None) -> None:
        import onnxruntime as ort

        self._fake = fake  # a FakeCuda: while it captures, runs are recorded, not run
        self._session = ort.InferenceSession(str(graph), sess_options=session_options(1),
                                             providers=["CPUExecutionProvider"])
        self._types = {v.name: v.type for v in (*self._session.get_inputs(),
                                                 *self._session.get_outputs())}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return name in self._types

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        t = self.shapes["input_ids"][0]
        if name == "logits":
            return (self.shapes["logit_index"][0], TINY.vocab_size)
        if name == "argmax":
            return (self.shapes["logit_index"][0],)
        return (TINY.num_layers, 2, TINY.num_kv_heads, t, TINY.head_dim)

    def execute_async_v3(self, stream: int) -> bool:
        capturing = getattr(self._fake, "capturing", None)
        if capturing is not None:  # like a captured graph: these shapes and addresses, later
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            capturing.append(lambda: self._run(shapes, addresses))
            return True
        self._run(self.shapes, self.addresses)
        return True

    def _run(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
        self.shapes, self.addresses = dict(shapes), dict(addresses)
        np_types = {"tensor(int64)": np.int64, "tensor(float16)": np.float16,
                    "tensor(float)": np.float32}
        binding = self._session.io_binding()
        for v in self._session.get_inputs():
            binding.bind_input(v.name, "cpu", 0, np_types[v.type], list(self.shapes[v.name]),
                               self.addresses[v.name])
        for v in self._session.get_outputs():
            binding.bind_output(v.name, "cpu", 0, np_types[v.type],
                                list(self.get_tensor_shape(v.name)), self.addresses[v.name])
        self._session.run_with_iobinding(binding)


class _FakeEngine:
    """Stands in for trt.ICudaEngine, with the I/O TensorRT's parser reports for the graph."""

    def __init__(self, trt: object, graph: Path, fake: object = None) -> None:
        from engine.executors.trt_build import network_io

        self._fake = fake
        self._trt = trt.module  # type: ignore[attr-defined]
        self._graph = graph
        self._io = list(network_io(graph, trt).items())  # type: ignore[arg-type]
        self.num_io_tensors = len(self._io)

    def get_tensor_name(self, i: int) -> str:
        return self._io[i][0]

    def get_tensor_mode(self, name: str) -> object:
        kind = dict(self._io)[name][0]
        return self._trt.TensorIOMode.INPUT if kind == "input" else self._trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> object:
        names = {"half": "HALF", "float": "FLOAT", "int64": "INT64"}
        return getattr(self._trt.DataType, names[dict(self._io)[name][1]])

    def create_execution_context(self) -> _OrtBackedTrtContext:
        return _OrtBackedTrtContext(self._graph, self._fake)


def test_trt_executor_flow_on_fake_device(fake: object, graphs: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """TrtExecutor's step (shapes, addresses, execute, scatter, logits) matches the CPU executor
    when the engine is stood in for; only deserialization and TensorRT's kernels are missing."""
    from engine.executors import trt as trt_exec
    from engine.executors.trt_build import TensorRTError, import_tensorrt

    try:
        trt = import_tensorrt()
    except TensorRTError as exc:
        pytest.skip(str(exc))
    monkeypatch.setattr(trt_exec.TrtExecutor, "_load_engine",
                        lambda self, path, bs, nb: _FakeEngine(trt, path))
    ref = OrtExecutor(graphs["float32"], TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                      max_context=TINY.max_position_embeddings)
    dut = trt_exec.TrtExecutor(graphs["float16"], TINY, num_blocks=NUM_BLOCKS,
                               block_size=BLOCK_SIZE, max_context=TINY.max_position_embeddings,
                               limits=StepLimits(64, 8, TINY.max_position_embeddings))
    assert dut.device_io.geometry.dtype == "float16"
    errors = lockstep(ref, dut, vocab=TINY.vocab_size, block_size=BLOCK_SIZE,
                      num_blocks=NUM_BLOCKS, decode_steps=10)
    assert max(errors) < FP16_TOLERANCE, errors
    dut.close()
    dut.close()
    assert fake.allocations == {}  # type: ignore[attr-defined]


def test_trt_decode_graphs_on_fake_device(fake: object, graphs: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """TrtExecutor with cuda_graphs: a decode bucket's first step runs plainly and is captured
    (stream capture), later steps launch the captured graph; the greedy tokens and logits equal
    the uncaptured TensorRT path; closing destroys every graph."""
    from engine.executors import trt as trt_exec
    from engine.executors.trt_build import TensorRTError, import_tensorrt

    from .workload import greedy_tokens

    try:
        trt = import_tensorrt()
    except TensorRTError as exc:
        pytest.skip(str(exc))
    monkeypatch.setattr(trt_exec.TrtExecutor, "_load_engine",
                        lambda self, path, bs, nb: _FakeEngine(trt, path, fake))
    results = []
    for captured in (False, True):
        ex = trt_exec.TrtExecutor(graphs["float16"], TINY, num_blocks=NUM_BLOCKS,
                                  block_size=BLOCK_SIZE, max_context=TINY.max_position_embeddings,
                                  limits=StepLimits(64, 8, TINY.max_position_embeddings),
                                  cuda_graphs=captured)
        try:
            results.append(greedy_tokens(ex, [[1, 2, 3], [4, 5, 6, 7], [8]],
                                         block_size=BLOCK_SIZE, steps=6))
            replays = ex.graph_replays
        finally:
            ex.close()
    (want, want_logits), (got, got_logits) = results
    assert got == want
    for a, b in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.abs(b).max())
    assert replays == 5 and fake.graph_launches == 5  # type: ignore[attr-defined]
    assert fake.graphs == {} and fake.allocations == {}  # type: ignore[attr-defined]


def test_device_compute_capability_reads_the_driver_attributes(fake: object) -> None:
    """The backend choice's capability query (no context created) over the fake driver, which
    reports sm_86."""
    from engine.device.cuda import device_compute_capability

    assert device_compute_capability(0) == (8, 6)
