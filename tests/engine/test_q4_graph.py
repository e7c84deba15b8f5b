"""The MatMulNBits single-token graph on a tiny Q4_1 model: same I/O as the dense graph, same
logits as the float64 reference, and OrtExecutor runs exactly the one-token calls through it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import onnx
import pytest
from gguf.quants import quantize
from tiny_llama import PagedSeq, ShuffledBlocks, assert_close, random_weights, schedule

from engine.builder import (
    DATA_FILE,
    MODEL_FILE,
    Q4_DATA_FILE,
    Q4_MODEL_FILE,
    GraphSpec,
    build_model_graph,
)
from engine.config import ModelConfig
from engine.executors.ort import (
    DENSE,
    SINGLE_TOKEN,
    SINGLE_TOKEN_DYNAMIC_BLOCK_BASE,
    OrtExecutor,
)
from engine.graph.single_token import past_input_names, present_output_names
from engine.loaders.gguf_q4 import HEAD, LINEARS, Q4Blocks, decode_blocks, decode_q8_0
from engine.reference import reference_logits
from scheduler.plan import StepPlan

BLOCK = 4
NUM_BLOCKS = 64
# every linear's input dim a multiple of 32; head_dim 16 -> the query scale 1/4 is exact
CONFIG = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     intermediate_size=96, vocab_size=97, rope_theta=10000.0,
                     tie_word_embeddings=True, max_position_embeddings=256)
Model = tuple[dict[str, np.ndarray], Path, GraphSpec]


def q4_model(kind: str, head_kind: str, config: ModelConfig = CONFIG
             ) -> tuple[dict[str, np.ndarray], dict[str, Q4Blocks]]:
    """Random weights whose layer linears and (tied) head went through gguf's quantizer: the
    float32 weights are exactly the blocks' dequantized values."""
    weights = random_weights(config, seed=11)
    embed = "model.embed_tokens.weight"
    raw = quantize(weights[embed], gguf.GGMLQuantizationType[head_kind])
    parts = decode_q8_0(raw) if head_kind == "Q8_0" else [decode_blocks(raw, head_kind)]
    weights[embed] = sum(p.dequantize() for p in parts)
    blocks = {f"{HEAD}.{i}": p for i, p in enumerate(parts)}
    for i in range(config.num_layers):
        for linear in LINEARS:
            name = f"model.layers.{i}.{linear}"
            raw = quantize(weights[f"{name}.weight"], gguf.GGMLQuantizationType[kind])
            blocks[name] = decode_blocks(raw, kind)
            weights[f"{name}.weight"] = blocks[name].dequantize()
    return weights, blocks


@pytest.fixture(scope="module", params=[("Q4_1", "Q8_0"), ("Q4_0", "Q4_1")],
                ids=["q4_1-head_q8_0", "q4_0-head_q4_1"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    weights, blocks = q4_model(*request.param)
    out = tmp_path_factory.mktemp(f"q4-{request.param[0]}")
    spec = build_model_graph(CONFIG, weights, out, block_size=BLOCK, blocks=blocks)
    return weights, out, spec


@pytest.fixture
def executor(model: Model) -> Iterator[OrtExecutor]:
    _, out, spec = model
    assert spec.q4_model_file == Q4_MODEL_FILE
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                     max_context=256, intra_op_threads=1, single_token_model=out / Q4_MODEL_FILE)
    yield ex
    ex.close()


def test_q4_graph_has_its_own_io_and_matmulnbits(model: Model) -> None:
    """As inputs the one token, its position, the logit rows and each layer's past buffer
    [1, KVH, S, D] (no pool); as outputs the logits and each layer's present buffer of the same
    shape; every layer linear (gate and up as one) and the head's parts are MatMulNBits."""
    _, out, _ = model
    dense = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    q4 = onnx.load(str(out / Q4_MODEL_FILE), load_external_data=False)
    layers = CONFIG.num_layers
    assert [o.name for o in q4.graph.output] == ["logits", *present_output_names(layers)]
    names = [i.name for i in q4.graph.input]
    assert names == ["input_ids", "positions", "logit_index", *past_input_names(layers)]
    buffer = [1, CONFIG.num_kv_heads, "S", CONFIG.head_dim]
    for value in (q4.graph.input[3], q4.graph.output[1]):
        assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == buffer
    ops = [n.op_type for n in q4.graph.node]
    head = [n for n in q4.graph.node if n.op_type == "MatMulNBits"
            and n.input[1].startswith(f"{HEAD}.")]
    assert len(head) in (1, 2) and ops.count("MatMulNBits") == 4 * layers + len(head)
    assert {(o.domain, o.version) for o in q4.opset_import} >= {("com.microsoft", 1)}
    assert not any(n.op_type == "MatMulNBits" for n in dense.graph.node)
    nbits = next(n for n in q4.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits.attribute}
    assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 32, 1)


def test_single_token_graph_has_fewer_nodes_per_layer(model: Model) -> None:
    """The single-token graph: one GroupQueryAttention a layer (RoPE inside, past and present
    its buffers: no Gather, Concat, Transpose or mask), residual Adds folded into
    SkipSimplifiedLayerNormalization, SiLU as QuickGelu, the Q4_1 minimum's correction as
    MatMulNBits's bias (no Add after it); the dense graph keeps its general layer."""
    _, out, _ = model
    dense = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    q4 = onnx.load(str(out / Q4_MODEL_FILE), load_external_data=False)
    ops = [n.op_type for n in q4.graph.node]
    layers = CONFIG.num_layers
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * layers
    assert ops.count("GroupQueryAttention") == layers
    assert ops.count("QuickGelu") == layers
    for absent in ("Transpose", "Concat", "Softmax", "RotaryEmbedding", "Sigmoid", "Where"):
        assert ops.count(absent) == 0, absent
    assert ops.count("Gather") == 2  # embedding, logit rows
    # a reshape to blocks of 32 per ReduceSum (the Q4_1 minimum's block sums), and the output
    assert ops.count("Reshape") == ops.count("ReduceSum") + 1
    gqa = next(n for n in q4.graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gqa.attribute}
    assert (attrs["do_rotary"], attrs["scale"], attrs["num_heads"], attrs["kv_num_heads"]) == (
        1, 1.0, CONFIG.num_heads, CONFIG.num_kv_heads)
    assert list(gqa.input[3:5]) == past_input_names(layers)[:2]
    assert list(gqa.output[1:]) == present_output_names(layers)[:2]
    linears = [n for n in q4.graph.node if n.op_type == "MatMulNBits"
               and not n.input[1].startswith(f"{HEAD}.")]
    assert len(linears) == 4 * layers
    inputs = {i for n in q4.graph.node for i in n.input}
    for n in linears:  # minimum (Q4_1): its correction is the bias; none (Q4_0): no bias
        has_min = n.input[1].removesuffix(".q4") + ".q4_mins_t" in inputs
        assert (len(n.input) == 6 and n.input[5] != "") == has_min
    added = {i for n in q4.graph.node if n.op_type == "Add" for i in n.input}
    assert not added & {n.output[0] for n in linears}
    assert "SkipSimplifiedLayerNormalization" not in {n.op_type for n in dense.graph.node}


def test_no_single_token_graph_for_a_head_dim_rope_inside_attention_cannot_take(
        tmp_path: Path) -> None:
    """GroupQueryAttention rotates heads whose size is a multiple of 16 only: other models
    keep the dense graph for every step."""
    config = replace(CONFIG, num_heads=8, num_kv_heads=4, head_dim=8)
    weights, blocks = q4_model("Q4_1", "Q8_0", config)
    spec = build_model_graph(config, weights, tmp_path, block_size=BLOCK, blocks=blocks)
    assert spec.q4_model_file is None and not (tmp_path / Q4_MODEL_FILE).exists()


def test_q4_graph_reads_shared_weights_from_the_dense_data_file(model: Model) -> None:
    """The embedding is written once (model.onnx.data) and referenced by both graphs; the q4
    data file holds only what the q4 graph alone uses (its head is 4-bit parts)."""
    _, out, _ = model

    def external(path: Path) -> dict[str, dict[str, str]]:
        m = onnx.load(str(path), load_external_data=False)
        return {t.name: {e.key: e.value for e in t.external_data} for t in m.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}

    dense, q4 = external(out / MODEL_FILE), external(out / Q4_MODEL_FILE)
    name = "model.embed_tokens.weight"
    assert q4[name] == dense[name] and q4[name]["location"] == DATA_FILE
    assert "lm_head.weight_t" in dense and "lm_head.weight_t" not in q4
    assert all(ref["location"] == DATA_FILE for ref in dense.values())
    own = {n: ref for n, ref in q4.items() if ref["location"] != DATA_FILE}
    assert own and not own.keys() & dense.keys()
    end = max(int(ref["offset"]) + int(ref["length"]) for ref in own.values())
    assert (out / Q4_DATA_FILE).stat().st_size == end


def test_decode_routes_single_tokens_to_q4_graph(model: Model, executor: OrtExecutor) -> None:
    """Prefill and two-sequence steps run dense, one-token steps run the q4 graph; every logits
    row matches the float64 reference on the dequantized weights."""
    weights = model[0]
    rng = np.random.default_rng(3)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=3)
    a, b = PagedSeq(0), PagedSeq(1)

    def step(seqs: list[PagedSeq], lengths: list[int], step_id: int) -> None:
        plan = [schedule(s, rng.integers(0, 97, n).tolist(), blocks, BLOCK)
                for s, n in zip(seqs, lengths, strict=True)]
        result = executor.execute(StepPlan(step_id, plan))
        for row, seq in zip(result.logits, seqs, strict=True):
            assert_close(row, reference_logits(CONFIG, weights, seq.tokens)[-1])

    step([a], [9], 0)
    assert executor.runs == {DENSE: 1, SINGLE_TOKEN: 0}
    for i in range(1, 6):
        step([a], [1], i)
    assert executor.runs == {DENSE: 1, SINGLE_TOKEN: 5}
    step([b], [6], 6)
    step([a, b], [1, 1], 7)
    assert executor.runs == {DENSE: 3, SINGLE_TOKEN: 5}
    step([b], [1], 8)
    assert executor.runs == {DENSE: 3, SINGLE_TOKEN: 6}


def test_executor_without_q4_graph_runs_dense_only(model: Model) -> None:
    _, out, _ = model
    ex = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                     max_context=256, intra_op_threads=1)
    seq = PagedSeq(0)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=4)
    for step_id, tokens in enumerate(([1, 2, 3], [4], [5])):
        ex.execute(StepPlan(step_id, [schedule(seq, tokens, blocks, BLOCK)]))
    assert ex.runs == {DENSE: 3, SINGLE_TOKEN: 0} and ex.single_token_session is None
    ex.close()


def test_two_sessions_stop_spinning_after_each_run(model: Model, executor: OrtExecutor) -> None:
    """With a q4 graph the two sessions take turns on the same cores, so neither may leave its
    workers spinning after a run; a lone dense session keeps onnxruntime's default."""
    key = "session.force_spinning_stop"
    for session in (executor.session, executor.single_token_session):
        assert session is not None
        assert session.get_session_options().get_session_config_entry(key) == "1"
    _, out, _ = model
    alone = OrtExecutor(out / MODEL_FILE, CONFIG, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                        max_context=256, intra_op_threads=1)
    with pytest.raises(Exception, match=key):
        alone.session.get_session_options().get_session_config_entry(key)
    alone.close()


def test_single_token_session_takes_dynamic_blocks(executor: OrtExecutor) -> None:
    """Only the single-token session splits its parallel loops into dynamic blocks (one-token
    steps); the dense session (prefill, batched decode) keeps onnxruntime's fixed shares."""
    key = "session.intra_op.dynamic_block_base"
    single = executor.single_token_session
    assert single is not None
    assert single.get_session_options().get_session_config_entry(key) == str(
        SINGLE_TOKEN_DYNAMIC_BLOCK_BASE)
    with pytest.raises(Exception, match=key):
        executor.session.get_session_options().get_session_config_entry(key)


def test_no_q4_graph_for_fp16_or_without_blocks(tmp_path: Path) -> None:
    """fp16 (TensorRT) graphs and dense-only sources get no MatMulNBits variant."""
    weights, blocks = q4_model("Q4_1", "Q8_0")
    fp16 = build_model_graph(CONFIG, weights, tmp_path / "fp16", dtype="float16", blocks=blocks)
    plain = build_model_graph(CONFIG, weights, tmp_path / "plain")
    assert fp16.q4_model_file is None and plain.q4_model_file is None
    assert not (tmp_path / "fp16" / Q4_MODEL_FILE).exists()
    assert not (tmp_path / "plain" / Q4_MODEL_FILE).exists()
