"""The bfloat16 graph variant (for GPUs): valid opset-23 ONNX with bf16 weights, pool and
new K/V and float32 logits, and numerically a bf16 run of the same model. onnxruntime's CPU
kernels have no bfloat16, so here it runs through ONNX's reference evaluator; the CUDA
executor runs it on the GPU machine (tests/gpu/test_ort_cuda.py)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from tiny_llama import PagedSeq, ShuffledBlocks, assert_close, schedule, tiny_config

from engine.backends import ORT_CPU
from engine.builder import BUILDER_VERSION, MODEL_FILE, build_model_graph
from engine.config import ModelError
from engine.host_kv_pool import HostKVPool
from engine.reference import random_weights, reference_logits
from engine.runtime import EngineOptions, load_model
from engine.step_inputs import pack_seqs

BLOCK = 4
CONFIG = tiny_config(heads=4, kv_heads=2, scaled_rope=True, tied=False)
# relative to the largest |logit|, against the fp32 reference on the same bf16-rounded
# weights (bf16 activations keep 8 significant bits; measured ~9e-3)
BF16_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], Path]:
    weights = random_weights(CONFIG, 3)
    out = tmp_path_factory.mktemp("bf16")
    spec = build_model_graph(CONFIG, weights, out, dtype="bfloat16", block_size=BLOCK)
    assert (spec.dtype, spec.opset, spec.attention, spec.builder_version) == (
        "bfloat16", 23, "onnx_attention", BUILDER_VERSION)
    assert spec.output_names == ("logits", "new_kv", "argmax") and spec.q4_model_file is None
    return weights, out / MODEL_FILE


def test_bf16_graph_is_valid_onnx_with_rounded_weights(graph: tuple[dict, Path]) -> None:
    weights, path = graph
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}
    assert types["kv_cache"] == types["new_kv"] == onnx.TensorProto.BFLOAT16
    assert types["logits"] == onnx.TensorProto.FLOAT
    inits = {t.name: t for t in m.graph.initializer}
    embed = numpy_helper.to_array(inits["model.embed_tokens.weight"])
    want = weights["model.embed_tokens.weight"].astype(ml_dtypes.bfloat16)  # round to nearest even
    assert embed.dtype == ml_dtypes.bfloat16
    assert np.array_equal(embed.view(np.uint16), want.view(np.uint16))
    big = [t for t in m.graph.initializer if np.prod(t.dims) >= CONFIG.hidden_size ** 2]
    assert big and all(t.data_type == onnx.TensorProto.BFLOAT16 for t in big)


def test_bf16_graph_matches_reference_through_a_paged_pool(graph: tuple[dict, Path]) -> None:
    """Prefill, a second chunk and decode steps over shuffled blocks of a bf16 pool: logits near
    the fp32 reference on bf16-rounded weights, argmax equal to the logits' own."""
    weights, path = graph
    rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in weights.items()}
    session = ReferenceEvaluator(str(path))
    pool = HostKVPool(CONFIG, 32, BLOCK, ml_dtypes.bfloat16)
    blocks, seq = ShuffledBlocks(32, seed=5), PagedSeq(0)
    tokens = np.random.default_rng(5).integers(0, CONFIG.vocab_size, 19).tolist()
    for chunk in (tokens[:9], tokens[9:14], *([t] for t in tokens[14:])):
        packed = pack_seqs([schedule(seq, chunk, blocks, BLOCK)], BLOCK)
        logits, new_kv, argmax = session.run(None, dict(packed.feeds, kv_cache=pool.graph_view))
        pool.write(packed.slot_blocks, packed.slot_offsets, new_kv)
        assert new_kv.dtype == ml_dtypes.bfloat16 and logits.dtype == np.float32
        assert argmax[0] == logits[0].argmax()
        assert_close(logits[0], reference_logits(CONFIG, rounded, seq.tokens)[-1],
                     rel=BF16_TOLERANCE)


def test_cpu_backend_refuses_bf16_before_building(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's CPU kernels have no bfloat16: one clear error, and nothing gets built."""
    monkeypatch.setattr("engine.runtime.backend_candidates", lambda requested: [ORT_CPU])
    opts = EngineOptions(backend="onnxruntime", dtype="bfloat16", cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match="onnxruntime-cpu cannot run bfloat16 graphs"):
        load_model(opts)
    assert not any(tmp_path.rglob("*.onnx"))
