"""The `fast` CPU precision (int8 activations in the single-token MatMulNBits graph): its graph,
its 8-bit head, its own cache entry, and its greedy tokens against `exact` on SmolLM2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf.quants import quantize
from onnx import helper
from test_q4_graph import BLOCK, CONFIG, q4_model
from tiny_llama import assert_close

from engine.builder import MODEL_FILE, Q4_MODEL_FILE, build_model_graph
from engine.dtypes import EXACT, FAST
from engine.executors.ort import SINGLE_TOKEN, OrtExecutor
from engine.graph.quant import q8_linear
from engine.graph.writer import GraphWriter, save_model
from engine.loaders.gguf_q4 import decode_q8_0, join_q8_0
from engine.runtime import EngineOptions, LoadedModel, load_model
from scheduler.plan import ScheduledSeq, StepPlan

PROMPTS = ("Explain in one sentence why the sky is blue.", "Write a haiku about autumn leaves.",
           "What is the capital of France?", "List three uses of a paperclip.",
           "How do vaccines work?", "Give me a recipe for pancakes.")
TOKENS = 16


def nbits_attrs(path: Path) -> list[dict[str, int]]:
    model = onnx.load(str(path), load_external_data=False)
    return [{a.name: helper.get_attribute_value(a) for a in n.attribute} | {"head": int(
        n.input[1].startswith("lm_head"))} for n in model.graph.node if n.op_type == "MatMulNBits"]


def test_join_q8_0_inverts_decode_q8_0() -> None:
    w = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    raw = quantize(w, gguf.GGMLQuantizationType.Q8_0)
    parts = decode_q8_0(raw)
    joined = join_q8_0(parts)
    assert joined is not None
    codes, scale = joined
    blocks = raw.reshape(8, 2, 34)
    np.testing.assert_array_equal(codes.view(np.int8) ^ np.int8(-128),
                                  blocks[..., 2:].view(np.int8).reshape(8, 64))
    assert join_q8_0(parts[:1]) is None and join_q8_0(parts[::-1]) is None
    np.testing.assert_array_equal(scale, parts[1].scale)


def test_q8_linear_int8_activations_close_to_dense(tmp_path: Path) -> None:
    """One 8-bit MatMulNBits over Q8_0 codes: x @ W^T within int8-activation rounding."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((96, 128)).astype(np.float32)
    codes, scale = join_q8_0(decode_q8_0(quantize(w, gguf.GGMLQuantizationType.Q8_0)))
    dense = np.repeat(scale, 32, axis=1) * (codes.astype(np.float32) - 128)
    with open(tmp_path / "q8.onnx.data", "wb") as data:
        g = GraphWriter(data, "q8.onnx.data")
        g.op_to("Identity", [q8_linear(g, "w", "x", codes, scale, FAST)], "y")
    save_model(g, tmp_path / "q8.onnx", opset=18, graph_name="q8",
               inputs=[helper.make_tensor_value_info("x", 1, ["T", 128])],
               outputs=[helper.make_tensor_value_info("y", 1, ["T", 96])])
    x = rng.standard_normal((1, 128)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "q8.onnx")).run(None, {"x": x})[0]
    ref = x.astype(np.float64) @ dense.T.astype(np.float64)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < err < 2e-2  # int8 activations: not exact, but close


@pytest.mark.parametrize(("kind", "head_kind", "head_bits"),
                         [("Q4_1", "Q8_0", [8]), ("Q4_0", "Q4_1", [4])])
def test_fast_graph_int8_activations(kind: str, head_kind: str, head_bits: list[int],
                                     tmp_path: Path) -> None:
    """Every MatMulNBits at accuracy_level 4; a Q8_0 head is one 8-bit node; the dense graph is
    the exact build's; decode logits stay close to the exact graph's."""
    weights, blocks = q4_model(kind, head_kind)
    outs = {p: tmp_path / p for p in (EXACT, FAST)}
    specs = {p: build_model_graph(CONFIG, weights, outs[p], block_size=BLOCK, blocks=blocks,
                                  cpu_precision=p) for p in (EXACT, FAST)}
    assert (specs[EXACT].cpu_precision, specs[FAST].cpu_precision) == (EXACT, FAST)
    fast = nbits_attrs(outs[FAST] / Q4_MODEL_FILE)
    assert {a["accuracy_level"] for a in fast} == {4}
    assert [a["bits"] for a in fast if a["head"]] == head_bits
    assert {a["accuracy_level"] for a in nbits_attrs(outs[EXACT] / Q4_MODEL_FILE)} == {1}
    assert (outs[EXACT] / MODEL_FILE).read_bytes() == (outs[FAST] / MODEL_FILE).read_bytes()
    logits = {p: decode_logits(outs[p]) for p in (EXACT, FAST)}
    assert_close(logits[FAST], logits[EXACT], rel=5e-2)
    assert not np.array_equal(logits[FAST], logits[EXACT])


def decode_logits(out: Path) -> np.ndarray:
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=16, block_size=BLOCK, max_context=64,
                     intra_op_threads=1, single_token_model=out / Q4_MODEL_FILE)
    table = list(range(4))
    ex.execute(StepPlan(0, [ScheduledSeq(0, [3, 14, 15, 9, 26], 0, table, True)]))
    result = ex.execute(StepPlan(1, [ScheduledSeq(0, [5], 5, table, True)]))
    assert ex.runs[SINGLE_TOKEN] == 1
    ex.close()
    return result.logits[0]


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_precision"):
        EngineOptions(cpu_precision="int4")


@pytest.fixture(scope="module")
def models(smollm2_cache: Path) -> Iterator[dict[str, LoadedModel]]:
    loaded = {p: load_model(EngineOptions(cache_dir=str(smollm2_cache), kv_cache_blocks=8,
                                          cpu_precision=p)) for p in (EXACT, FAST)}
    yield loaded
    for m in loaded.values():
        m.close()


def greedy(model: LoadedModel, prompt: list[int], forced: list[int] | None) -> list[int]:
    """TOKENS greedy tokens; with `forced`, each step is fed forced[i] (teacher forcing)."""
    table, picks, chunk, start = list(range(8)), [], prompt, 0
    for step in range(TOKENS):
        out = model.executor.execute(StepPlan(step, [ScheduledSeq(0, chunk, start, table, True)]))
        picks.append(int(out.logits[0].argmax()))
        start += len(chunk)
        chunk = [picks[-1] if forced is None else forced[step]]
    return picks


def test_fast_tokens_agree_with_exact_on_smollm2(models: dict[str, LoadedModel],
                                                 smollm2_cache: Path) -> None:
    """Own cache entries; on exact's greedy continuation (teacher forced) fast picks the same
    token at >= 90% of positions; free running, most prompts agree on their first 8 tokens."""
    manifests = [json.loads(p.read_text()) for p in smollm2_cache.glob("models/*/manifest.json")]
    assert {m["graph"]["cpu_precision"] for m in manifests} >= {EXACT, FAST}
    tok = models[EXACT].tokenizer
    forced_same = free_agree = 0
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}])
        exact = greedy(models[EXACT], ids, None)
        forced = greedy(models[FAST], ids, exact)
        forced_same += sum(a == b for a, b in zip(exact, forced, strict=True))
        free_agree += greedy(models[FAST], ids, None)[:8] == exact[:8]
    assert forced_same >= 0.9 * TOKENS * len(PROMPTS)
    assert free_agree > len(PROMPTS) // 2
    assert models[FAST].executor.runs[SINGLE_TOKEN] > 0
