"""The MatMulNBits graph of the embedded SmolLM2 (Q4_1 GGUF): its blocks are exactly the dense
graph's weights, and its decode logits equal the dense graph's within 1e-4."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_llama import assert_close

from engine.builder import DATA_FILE, MODEL_FILE
from engine.config import ModelConfig
from engine.executors.ort import DENSE, SINGLE_TOKEN, OrtExecutor
from engine.graph.linears import q4_layer_blocks
from engine.loaders.gguf import config_from_gguf, open_gguf
from engine.loaders.gguf_q4 import Q4Blocks, blocks_from_gguf
from engine.prepare import prepare_model
from engine.registry import DEFAULT_MODEL, resolve_model
from engine.runtime import EngineOptions, LoadedModel, load_model
from scheduler.plan import ScheduledSeq, StepPlan

PROMPT = "Explain in one sentence why the sky is blue."


def dense_initializer(entry: Path, name: str) -> np.ndarray:
    """One external initializer of model.onnx, read from model.onnx.data."""
    model = onnx.load(str(entry / MODEL_FILE), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == name)
    info = {e.key: e.value for e in tensor.external_data}
    assert info["location"] == DATA_FILE and tensor.data_type == onnx.TensorProto.FLOAT
    flat = np.fromfile(entry / DATA_FILE, dtype=np.float32, count=int(info["length"]) // 4,
                       offset=int(info["offset"]))
    return flat.reshape(tuple(tensor.dims))


@pytest.fixture(scope="module")
def entry(smollm2_cache: Path) -> Path:
    return prepare_model(EngineOptions(cache_dir=str(smollm2_cache)))


@pytest.fixture(scope="module")
def smollm2_blocks() -> tuple[ModelConfig, dict[str, Q4Blocks]]:
    path = resolve_model(DEFAULT_MODEL).path
    reader = open_gguf(path)
    config = config_from_gguf(reader, path)
    blocks = blocks_from_gguf(reader, config, path)
    assert blocks is not None
    return config, blocks


@pytest.mark.parametrize(("layer", "key", "dense_name"), [
    (0, "qkv", "self_attn.qkv.weight_t"), (17, "qkv", "self_attn.qkv.weight_t"),
    (29, "o", "self_attn.o_proj.weight_t"), (8, "down", "mlp.down_proj.weight_t")])
def test_fused_blocks_equal_dense_graph_weights(
        entry: Path, smollm2_blocks: tuple[ModelConfig, dict[str, Q4Blocks]], layer: int,
        key: str, dense_name: str) -> None:
    """Permuted, fused and 1/8-scaled Q4 blocks reconstruct the dense graph's weight bit for bit."""
    config, blocks = smollm2_blocks
    p = f"model.layers.{layer}."
    got = q4_layer_blocks(config, blocks, p)[key].dequantize().T
    want = dense_initializer(entry, f"{p}{dense_name}")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.fixture(scope="module")
def pair(smollm2_cache: Path) -> Iterator[tuple[LoadedModel, LoadedModel]]:
    """The same entry loaded twice: dense only (q4_decode=False) and with the q4 graph."""
    opts = {"cache_dir": str(smollm2_cache), "kv_cache_blocks": 8}
    dense = load_model(EngineOptions(**opts, q4_decode=False))
    q4 = load_model(EngineOptions(**opts))
    yield dense, q4
    dense.close()
    q4.close()


def test_q4_decode_logits_match_dense(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """A prefill then 12 greedy decode steps in lockstep: logits within 1e-4 relative, argmax
    equal, and only the q4-enabled executor ran its single-token graph."""
    dense, q4 = pair
    assert isinstance(dense.executor, OrtExecutor) and isinstance(q4.executor, OrtExecutor)
    assert dense.executor.single_token_session is None
    assert q4.executor.single_token_session is not None
    tokens = dense.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
    table = list(range(8))
    start, chunk = 0, tokens
    for step in range(13):
        plan = StepPlan(step, [ScheduledSeq(0, chunk, start, table, True)])
        want, got = dense.executor.execute(plan), q4.executor.execute(plan)
        assert_close(got.logits[0], want.logits[0], rel=1e-4)
        assert got.logits[0].argmax() == want.logits[0].argmax()
        start += len(chunk)
        chunk = [int(want.logits[0].argmax())]
    assert dense.executor.runs == {DENSE: 13, SINGLE_TOKEN: 0}
    assert q4.executor.runs == {DENSE: 1, SINGLE_TOKEN: 12}
