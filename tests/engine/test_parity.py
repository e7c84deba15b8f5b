"""The ONNX graph run by OrtExecutor over the paged pool equals the numpy reference (fp32)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_llama import (
    PagedSeq,
    ShuffledBlocks,
    assert_close,
    random_weights,
    schedule,
    tiny_config,
)

from engine.builder import BUILDER_VERSION, DATA_FILE, MODEL_FILE, build_model_graph
from engine.config import ModelConfig
from engine.executors.ort import OrtExecutor
from engine.executors.packing import split_for_padding
from engine.host_kv_pool import HostKVPool
from engine.reference import reference_logits
from scheduler.plan import ScheduledSeq, StepPlan

BLOCK = 4
NUM_BLOCKS = 96
CONFIGS = {
    "mha-plain-tied": tiny_config(heads=4, kv_heads=4, scaled_rope=False, tied=True),
    "mha-llama3-untied": tiny_config(heads=4, kv_heads=4, scaled_rope=True, tied=False),
    "gqa-plain-untied": tiny_config(heads=6, kv_heads=2, scaled_rope=False, tied=False),
    "gqa-llama3-tied": tiny_config(heads=4, kv_heads=1, scaled_rope=True, tied=True),
}
Model = tuple[ModelConfig, dict[str, np.ndarray], Path]


def _build(tmp: Path, name: str, impl: str | None = None, rotary: bool | None = None) -> Model:
    config = CONFIGS[name]
    weights = random_weights(config, seed=sorted(CONFIGS).index(name))
    out = tmp / f"{name}-{impl}-{rotary}"
    build_model_graph(config, weights, out, block_size=BLOCK, attention_impl=impl,
                      rotary_op=rotary)
    return config, weights, out / MODEL_FILE


@pytest.fixture(scope="session", params=sorted(CONFIGS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    return _build(tmp_path_factory.mktemp("graphs"), request.param)


@pytest.fixture(scope="session")
def attention_op_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return _build(tmp_path_factory.mktemp("graphs"), "gqa-llama3-tied", "onnx_attention")


@pytest.fixture(scope="session")
def opset18_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return _build(tmp_path_factory.mktemp("graphs"), "gqa-plain-untied", "decomposed", False)


def _executor(model: Model, pad_slack: int = 128) -> Iterator[OrtExecutor]:
    config, _, path = model
    ex = OrtExecutor(path, config, num_blocks=NUM_BLOCKS, block_size=BLOCK, max_context=256,
                     intra_op_threads=1, pad_slack=pad_slack)
    yield ex
    ex.close()


@pytest.fixture
def executor(model: Model) -> Iterator[OrtExecutor]:
    yield from _executor(model)


def _check_step(ex: OrtExecutor, model: Model, seqs: list[PagedSeq],
                scheduled: list[ScheduledSeq], step: int) -> None:
    """Runs one step and compares every logits row with the reference's row for that token."""
    config, weights, _ = model
    result = ex.execute(StepPlan(step_id=step, seqs=scheduled))
    assert result.step_id == step
    assert result.logits.dtype == np.float32
    wanted = [(seq, s) for seq, s in zip(seqs, scheduled, strict=True) if s.want_logits]
    assert result.logits.shape == (len(wanted), config.vocab_size)
    assert result.argmax is None  # fp32 (CPU) graphs leave the argmax to the sampler
    for row, (seq, s) in zip(result.logits, wanted, strict=True):
        pos = s.start_pos + len(s.token_ids) - 1
        assert_close(row, reference_logits(config, weights, seq.tokens[:pos + 1])[pos])


def test_prefill_of_several_sequences_in_one_step(model: Model, executor: OrtExecutor) -> None:
    """Prompts of lengths 1, 7 and 13 prefilled together give the reference's last-token logits."""
    rng = np.random.default_rng(1)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=1)
    seqs = [PagedSeq(i) for i in range(3)]
    scheduled = [schedule(s, rng.integers(0, 97, n).tolist(), blocks, BLOCK)
                 for s, n in zip(seqs, (1, 7, 13), strict=True)]
    _check_step(executor, model, seqs, scheduled, step=0)


def test_chunked_prefill_in_odd_chunks(model: Model, executor: OrtExecutor) -> None:
    """A 23-token prompt fed in chunks 5, 3, 7, 1, 7 matches the reference after every chunk."""
    rng = np.random.default_rng(2)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=2)
    seq = PagedSeq(0)
    for step, n in enumerate((5, 3, 7, 1, 7)):
        s = schedule(seq, rng.integers(0, 97, n).tolist(), blocks, BLOCK)
        _check_step(executor, model, [seq], [s], step)


def _decode_run(ex: OrtExecutor, model: Model, steps: int) -> None:
    """Three prompts prefilled together, then `steps` batched decode steps; a fourth sequence
    arrives midway with a chunked prefill mixed into the decode batch."""
    rng = np.random.default_rng(3)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=3)
    seqs = [PagedSeq(i) for i in range(3)]
    scheduled = [schedule(s, rng.integers(0, 97, n).tolist(), blocks, BLOCK)
                 for s, n in zip(seqs, (5, 9, 14), strict=True)]
    _check_step(ex, model, seqs, scheduled, step=0)
    late = PagedSeq(3)
    late_chunks = {steps // 2: 6, steps // 2 + 1: 5}
    for step in range(1, steps + 1):
        batch = list(seqs)
        scheduled = [schedule(s, [int(rng.integers(0, 97))], blocks, BLOCK) for s in seqs]
        if step in late_chunks:
            done = step == max(late_chunks)
            scheduled.insert(1, schedule(late, rng.integers(0, 97, late_chunks[step]).tolist(),
                                         blocks, BLOCK, want_logits=done))
            batch.insert(1, late)
            if done:
                seqs.append(late)
        _check_step(ex, model, batch, scheduled, step)


def test_twenty_decode_steps_through_the_paged_pool(model: Model, executor: OrtExecutor) -> None:
    """20 decode steps of several sequences with shuffled, non-contiguous block tables."""
    _decode_run(executor, model, steps=20)


def test_opset23_attention_graph_matches_reference(attention_op_model: Model) -> None:
    """The TensorRT-flavoured graph (opset-23 Attention, BHND) computes the same in fp32."""
    for ex in _executor(attention_op_model):
        _decode_run(ex, attention_op_model, steps=6)


def test_mixed_step_split_by_padding_keeps_plan_order(model: Model) -> None:
    """A long chunk among decodes runs as separate graph calls; rows still come in plan order."""
    rng = np.random.default_rng(6)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=6)
    seqs = [PagedSeq(i) for i in range(4)]
    first = [schedule(s, rng.integers(0, 97, 3 + i).tolist(), blocks, BLOCK)
             for i, s in enumerate(seqs[:3])]
    for ex in _executor(model, pad_slack=0):
        _check_step(ex, model, seqs[:3], first, step=0)
        mixed = [schedule(s, [int(rng.integers(0, 97))], blocks, BLOCK) for s in seqs[:3]]
        mixed.insert(2, schedule(seqs[3], rng.integers(0, 97, 20).tolist(), blocks, BLOCK))
        assert split_for_padding(mixed, slack=0) == [[0, 2], [1, 3]]
        _check_step(ex, model, [seqs[0], seqs[1], seqs[3], seqs[2]], mixed, step=1)


def test_split_for_padding_groups() -> None:
    """Decodes stay together; a long chunk takes at most one short neighbour along."""
    def seq(n: int) -> ScheduledSeq:
        return ScheduledSeq(0, [1] * n, 0, [0] * 64, True)
    assert split_for_padding([seq(1)] * 16, slack=0) == [list(range(16))]
    assert split_for_padding([seq(8)] + [seq(1)] * 15, slack=128) == [list(range(16))]
    assert split_for_padding([seq(1), seq(512), seq(1), seq(1)], slack=128) == [[0, 1], [2, 3]]


def test_opset18_graph_matches_reference(opset18_model: Model) -> None:
    """The pure opset-18 variant (decomposed attention and RoPE) computes the same."""
    assert onnx.load(str(opset18_model[2]), load_external_data=False).opset_import[0].version == 18
    for ex in _executor(opset18_model):
        _decode_run(ex, opset18_model, steps=6)


def test_block_copies_before_the_step(model: Model, executor: OrtExecutor) -> None:
    """Copy-on-write: B shares A's first block, gets a copy of A's partial second block, then
    diverges; the copy lands before B's step reads it, and A's blocks stay untouched."""
    config, weights, _ = model
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, 97, 6).tolist()  # 1.5 blocks
    a = PagedSeq(0)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=4)
    executor.execute(StepPlan(0, [schedule(a, prompt, blocks, BLOCK)]))
    before = executor.pool.data.copy()
    fresh = next(i for i in range(NUM_BLOCKS) if i not in a.block_table)
    b = PagedSeq(1, tokens=list(prompt), block_table=[a.block_table[0], fresh])
    tail = rng.integers(0, 97, 3).tolist()
    s = schedule(b, tail, blocks, BLOCK)
    result = executor.execute(StepPlan(1, [s], block_copies=[(a.block_table[1], fresh)]))
    assert_close(result.logits[0], reference_logits(config, weights, prompt + tail)[-1])
    after = executor.pool.data
    np.testing.assert_array_equal(after[:, :, :, a.block_table], before[:, :, :, a.block_table])
    np.testing.assert_array_equal(after[:, :, :, fresh, :2], before[:, :, :, a.block_table[1], :2])


def test_rows_without_logits_are_skipped_in_plan_order(model: Model,
                                                       executor: OrtExecutor) -> None:
    """Only want_logits sequences get a row, in plan order; a step with none returns [0, V]."""
    config, weights, _ = model
    rng = np.random.default_rng(5)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=5)
    seqs = [PagedSeq(i) for i in range(3)]
    first = [schedule(s, rng.integers(0, 97, 4 + i).tolist(), blocks, BLOCK, want_logits=False)
             for i, s in enumerate(seqs)]
    none = executor.execute(StepPlan(0, first))
    assert none.logits.shape == (0, config.vocab_size)
    assert none.argmax is None
    second = [schedule(s, rng.integers(0, 97, 2).tolist(), blocks, BLOCK, want_logits=i != 1)
              for i, s in enumerate(seqs)]
    _check_step(executor, model, seqs, second, step=1)


def test_pool_slot_writes_and_block_copies() -> None:
    """write() puts token t at (block, offset); copy_blocks copies all layers, K and V."""
    config = CONFIGS["gqa-plain-untied"]
    pool = HostKVPool(config, num_blocks=5, block_size=4)
    new = np.arange(config.num_layers * 2 * 2 * 3 * 16, dtype=np.float32).reshape(2, 2, 2, 3, 16)
    pool.write(np.array([3, 3, 1]), np.array([2, 3, 0]), new)
    np.testing.assert_array_equal(pool.read([3, 1], 8)[:, :, :, [2, 3, 4]], new)
    pool.copy_blocks([(3, 0)])
    np.testing.assert_array_equal(pool.data[:, :, :, 0], pool.data[:, :, :, 3])
    assert pool.graph_view.shape == (2 * 2 * 2 * 5, 4, 16)
    assert np.shares_memory(pool.graph_view, pool.data)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_kv_bytes_per_block_is_the_pools_size(dtype: str) -> None:
    """The one bytes-per-block (ModelConfig.kv_bytes_per_block) is what a block really takes in
    the host pool and in the device pool's geometry, and what both sizing paths divide by."""
    from engine.device_kv_pool import geometry_for
    from engine.dtypes import NUMPY_DTYPES
    from engine.kv_sizing import blocks_that_fit, kv_cache_blocks
    from engine.options import EngineOptions

    config = CONFIGS["gqa-plain-untied"]
    per = config.kv_bytes_per_block(16, dtype)
    assert per == 2 * 2 * 2 * 16 * 16 * NUMPY_DTYPES[dtype].itemsize
    assert HostKVPool(config, 3, 16, NUMPY_DTYPES[dtype]).data.nbytes == 3 * per
    assert geometry_for(config, 3, 16, dtype).nbytes == 3 * per
    assert blocks_that_fit(config, 16, dtype, 10 * per + per - 1) == 10
    opts = EngineOptions(kv_cache_fraction=1.0, block_size=16)
    assert kv_cache_blocks(opts, config, 16, dtype, available=10 * per + per - 1) == 10


def test_argmax_output_only_in_half_precision_graphs(tmp_path: Path) -> None:
    """fp32 (CPU) graphs end at the logits: onnxruntime runs every node whether or not an
    output is bound, and its single-threaded CPU ArgMax is slower than the sampler's numpy one."""
    config = CONFIGS["gqa-llama3-tied"]
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        spec = build_model_graph(config, random_weights(config, 0), out, dtype=dtype)
        m = onnx.load(str(out / MODEL_FILE), load_external_data=False)
        names = tuple(o.name for o in m.graph.output)
        has_op = any(n.op_type == "ArgMax" for n in m.graph.node)
        assert names == spec.output_names
        assert (names[-1] == "argmax") == has_op == (dtype == "float16")


def test_fp16_graph_is_valid_onnx(tmp_path: Path) -> None:
    """The fp16 variant checks as opset 23 with fp16 weights/KV and fp32 logits."""
    config = CONFIGS["gqa-llama3-tied"]
    spec = build_model_graph(config, random_weights(config, 0), tmp_path, dtype="float16")
    assert (spec.dtype, spec.opset, spec.attention, spec.builder_version) == (
        "float16", 23, "onnx_attention", BUILDER_VERSION)
    assert (tmp_path / DATA_FILE).exists()
    onnx.checker.check_model(str(tmp_path / MODEL_FILE), full_check=True)
    m = onnx.load(str(tmp_path / MODEL_FILE), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}
    assert types["kv_cache"] == types["new_kv"] == onnx.TensorProto.FLOAT16
    assert types["logits"] == onnx.TensorProto.FLOAT
    assert types["argmax"] == onnx.TensorProto.INT64
    assert any(n.op_type == "Attention" for n in m.graph.node)


def test_fp16_graph_matches_reference_loosely(tmp_path: Path) -> None:
    """The fp16 (TensorRT-flavoured) graph also runs in onnxruntime CPU: prefill then a chunk,
    fp16 pool, logits within 1e-2 of the reference's scale (measured: ~2e-3)."""
    config = CONFIGS["gqa-llama3-tied"]
    weights = random_weights(config, 0)
    build_model_graph(config, weights, tmp_path, dtype="float16", block_size=BLOCK)
    ex = OrtExecutor(tmp_path / MODEL_FILE, config, num_blocks=NUM_BLOCKS, block_size=BLOCK,
                     max_context=256, kv_dtype=np.float16, intra_op_threads=1)
    blocks = ShuffledBlocks(NUM_BLOCKS, seed=7)
    seq = PagedSeq(0)
    tokens = np.random.default_rng(7).integers(0, 97, 17).tolist()
    for step, chunk in enumerate((tokens[:10], tokens[10:])):
        result = ex.execute(StepPlan(step, [schedule(seq, chunk, blocks, BLOCK)]))
        got = result.logits[0]
        assert result.argmax is not None and result.argmax[0] == got.argmax()
        assert_close(got, reference_logits(config, weights, seq.tokens)[-1], rel=1e-2)
    assert ex.pool.data.dtype == np.float16
    ex.close()
