"""The ONNX Runtime CUDA build writes a decode graph beside the model (model_decode.onnx:
com.microsoft GroupQueryAttention over the past gathered batch-major, engine/graph/gqa.py) and
the executor's decode buckets run it. On CPU (the fake device, onnxruntime's CPU kernels for the
CUDA EP): mixed steps (a chunked prefill beside decodes: the general graph for the chunks, the
decode graph for the decode rows), decodes and a block move give the fp32 decomposed graph's
logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.builder import build_model_graph
from engine.executors import ort_cuda
from engine.executors.ort import OrtExecutor, session_options
from engine.graph.attention import DECOMPOSED
from engine.graph.gqa import DECODE_MODEL_FILE
from engine.limits import StepLimits

from .tiny_model import BLOCK_SIZE, TINY, random_weights
from .workload import lockstep, relative_error, single_sequence_plans

NUM_BLOCKS = 64


def _build(root: Path, dtype: str, **kw: object) -> Path:
    build_model_graph(TINY, random_weights(), root, dtype=dtype, block_size=BLOCK_SIZE, **kw)
    return root / "model.onnx"


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_decode_graph_written_for_onnxruntime_cuda_builds_only(tmp_path: Path) -> None:
    spec = build_model_graph(TINY, random_weights(), tmp_path / "cuda", dtype="float16",
                             block_size=BLOCK_SIZE, rotary_op=True)
    assert spec.decode_model_file == DECODE_MODEL_FILE
    decode = _ops(tmp_path / "cuda" / DECODE_MODEL_FILE)
    assert decode.count("GroupQueryAttention") == TINY.num_layers and "Attention" not in decode
    # RoPE inside the op, residual Adds inside the norms: per layer one GroupQueryAttention,
    # two norms, four MatMuls (gate and up one GEMM, then a Split), two past Gathers and two
    # GatherElements (its new K/V); one Transpose for the whole step's new_kv
    layers = TINY.num_layers
    for op in ("RotaryEmbedding", "Sigmoid", "Sin", "Cos", "Pow", "Sqrt"):
        assert op not in decode, op
    assert decode.count("Add") == 4 and decode.count("Split") == 1 + layers  # 1: once a step
    assert decode.count("SkipSimplifiedLayerNormalization") == 2 * layers
    assert decode.count("QuickGelu") == layers and decode.count("GatherElements") == 2 * layers
    assert decode.count("MatMul") == 4 * layers + 1 and decode.count("Transpose") == 1
    assert "GroupQueryAttention" not in _ops(tmp_path / "cuda" / "model.onnx")
    for name, kw in (("trt", {}), ("fp32", {"rotary_op": True})):  # TensorRT, CPU
        dtype = "float32" if name == "fp32" else "float16"
        spec = build_model_graph(TINY, random_weights(), tmp_path / name, dtype=dtype,
                                 block_size=BLOCK_SIZE, **kw)
        assert spec.decode_model_file is None
        assert not (tmp_path / name / DECODE_MODEL_FILE).exists()


@pytest.fixture()
def bucket_paths(fake_host_ort: object, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Bucket sessions as fixed-shape CPU sessions; the graph file of each one made."""
    made: list[Path] = []

    def factory(path: Path, device: int, dims: dict[str, int], capture: bool = True) -> object:
        made.append(path)
        opts = session_options(1)
        for name, value in dims.items():
            opts.add_free_dimension_override_by_name(name, value)
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort_cuda, "_graph_session", factory)
    return made


def _cuda_executor(path: Path) -> ort_cuda.OrtCudaExecutor:
    return ort_cuda.OrtCudaExecutor(path, TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                    max_context=TINY.max_position_embeddings,
                                    limits=StepLimits(64, 4, TINY.max_position_embeddings))


@pytest.mark.parametrize("seed", [0, 1])
def test_decode_graph_equals_decomposed_over_mixed_steps(bucket_paths: list[Path],
                                                         tmp_path: Path, seed: int) -> None:
    ref = OrtExecutor(_build(tmp_path / "ref", "float32", attention_impl=DECOMPOSED),
                      TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                      max_context=TINY.max_position_embeddings)
    dut = _cuda_executor(_build(tmp_path / "dut", "float32", decode_graph=True))
    try:
        errors = lockstep(ref, dut, vocab=TINY.vocab_size, block_size=BLOCK_SIZE,
                          num_blocks=NUM_BLOCKS, seed=seed)
        assert dut._graphs is not None and len(dut._graphs.buckets) > 2
    finally:
        dut.close()
    assert len(errors) == 12 and max(errors) < 1e-4, errors
    assert bucket_paths and {p.name for p in bucket_paths} == {DECODE_MODEL_FILE}


def test_fp16_decode_graph_within_tolerance(bucket_paths: list[Path], tmp_path: Path) -> None:
    ref = OrtExecutor(_build(tmp_path / "ref", "float32"), TINY, num_blocks=NUM_BLOCKS,
                      block_size=BLOCK_SIZE, max_context=TINY.max_position_embeddings)
    dut = _cuda_executor(_build(tmp_path / "dut", "float16", rotary_op=True))
    try:
        errors = lockstep(ref, dut, vocab=TINY.vocab_size, block_size=BLOCK_SIZE,
                          num_blocks=NUM_BLOCKS)
    finally:
        dut.close()
    assert len(errors) == 12 and max(errors) < 2.5e-3, errors
    assert np.isfinite(errors).all() and {p.name for p in bucket_paths} == {DECODE_MODEL_FILE}


class _CountingSession:
    """A CPU session that counts its runs (stands in for a CUDA EP session)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = 0
        self._session = ort.InferenceSession(str(path), sess_options=session_options(1),
                                             providers=["CPUExecutionProvider"])

    def get_outputs(self) -> list:
        return self._session.get_outputs()

    def io_binding(self) -> object:
        return self._session.io_binding()

    def run_with_iobinding(self, binding: object) -> None:
        self.runs += 1
        self._session.run_with_iobinding(binding)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_single_sequence_steps_run_the_decode_graph(bucket_paths: list[Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    dtype: str) -> None:
    """A fresh prompt, a prompt chunk after a past (prefix-cache hit or chunked prefill) and
    uncaptured decode steps of one sequence go through the decode graph's own session (B = 1,
    Tq new tokens); steps of several prompts through the general graph; logits as the fp32
    decomposed graph's."""
    made: list[_CountingSession] = []

    def session(path: Path, device: int) -> _CountingSession:
        made.append(_CountingSession(path))
        return made[-1]

    monkeypatch.setattr(ort_cuda, "_session", session)
    ref = OrtExecutor(_build(tmp_path / "ref", "float32", attention_impl=DECOMPOSED),
                      TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                      max_context=TINY.max_position_embeddings)
    dut = ort_cuda.OrtCudaExecutor(_build(tmp_path / "dut", dtype, decode_graph=True), TINY,
                                   num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                   max_context=TINY.max_position_embeddings,
                                   limits=StepLimits(64, 4, TINY.max_position_embeddings))
    general, one_seq = made
    assert one_seq.path.name == DECODE_MODEL_FILE and general.path.name == "model.onnx"
    tol = 1e-4 if dtype == "float32" else 2.5e-3
    try:
        for step, plan in enumerate(single_sequence_plans(TINY.vocab_size)):
            want = ref.execute(plan).logits
            got = dut.execute(plan).logits
            assert relative_error(got, want) < tol, step
        assert one_seq.runs == 3 and general.runs == 1
    finally:
        dut.close()
