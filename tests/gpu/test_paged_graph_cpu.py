"""The paged decode graph (engine/graph/paged.py) on CPU: how it is written, and how the
onnxruntime CUDA executor binds it over the cuda-python fake device. onnxruntime's CPU EP has
no PagedAttention, so its numbers are checked on the GPU (tests/gpu/test_ort_cuda.py,
test_smollm2_graph_parity.py); here a recording session stands in for the CUDA session."""

from __future__ import annotations

import ctypes
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.config import ModelConfig
from engine.executors import ort_cuda
from engine.graph.linears import grouped_qkv
from engine.graph.paged import PAGED_MODEL_FILE, PREFILL_MODEL_FILE, cache_input_names
from engine.limits import StepLimits
from engine.step_inputs import pack_plan, pair_feeds
from scheduler.plan import ScheduledSeq, StepPlan

from .tiny_model import TINY, build_graph

BLOCK_SIZE = 16  # PagedAttention's smallest block
NUM_BLOCKS = 32


def test_grouped_qkv_rows_follow_their_kv_head() -> None:
    """[Q heads of h | K_h | V_h] per kv head h: the same rows as the fused qkv, regrouped."""
    cfg = ModelConfig(hidden_size=8, num_layers=1, num_heads=6, num_kv_heads=2, head_dim=2,
                      intermediate_size=8, vocab_size=8)
    qkv = np.arange((6 + 2 * 2) * 2)[:, None] * np.ones((1, 8))  # row r holds r
    got = grouped_qkv(cfg, qkv)[:, 0].astype(int).tolist()
    # Q heads 0-2 (rows 0-5), K head 0 (12-13), V head 0 (16-17); then Q 3-5, K 1, V 1
    assert got == [0, 1, 2, 3, 4, 5, 12, 13, 16, 17, 6, 7, 8, 9, 10, 11, 14, 15, 18, 19]


def test_pair_feeds_put_each_pairs_tokens_back_to_back() -> None:
    """Two sequences (3 tokens after a past of 4; 2 fresh ones), 2 kv heads, 4-token blocks,
    10 pool blocks: pair (b, h) reads blocks table_b + h * 10 and writes slot + h * 40."""
    seqs = [ScheduledSeq(0, [1, 2, 3], 4, [5, 6], True), ScheduledSeq(1, [7, 8], 0, [9], True)]
    packed = pack_plan(StepPlan(0, seqs), 4)
    slots = packed.slot_blocks * 4 + packed.slot_offsets
    assert slots.tolist() == [24, 25, 26, 36, 37]
    f = pair_feeds(seqs, slots, 4, 10, 2)
    # natural rows are token * 2 + head: pair (0, 0) holds tokens 0-2 = rows 0, 2, 4
    assert f["pair_order"].tolist() == [0, 2, 4, 1, 3, 5, 6, 8, 7, 9]
    assert f["pair_order"][f["pair_inverse"]].tolist() == list(range(10))
    assert f["pair_cu"].tolist() == [0, 3, 6, 8, 10]
    assert f["pair_past"].tolist() == [4, 4, 0, 0]
    assert f["pair_table"].tolist() == [[5, 6], [15, 16], [9, 0], [19, 10]]
    assert f["pair_slots"].tolist() == [24, 25, 26, 64, 65, 66, 36, 37, 76, 77]


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_graph(tmp_path_factory.mktemp("paged") / "float16", "float16", rotary_op=True,
                       block_size=BLOCK_SIZE)


def test_paged_graph_only_where_the_op_runs(tmp_path: Path) -> None:
    """fp16 / bf16 with blocks of a power of two >= 16 tokens; else the decode graph alone."""
    for dtype, block in (("float16", 4), ("float16", 24), ("float32", 16)):
        build_graph(tmp_path / f"{dtype}-{block}", dtype, rotary_op=True, block_size=block)
        assert not (tmp_path / f"{dtype}-{block}" / PAGED_MODEL_FILE).exists()


def test_paged_graph_reads_and_writes_the_pool_in_place(graph: Path) -> None:
    """One PagedAttention a layer over that layer's K and V slabs; no past gather, no new_kv."""
    model = onnx.load(str(graph.parent / PAGED_MODEL_FILE), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["PagedAttention"] == TINY.num_layers and "GatherElements" not in ops
    assert ops["Gather"] == 5  # the embedding, three shape reads, the logit rows
    names = [i.name for i in model.graph.input]
    assert names[5:] == cache_input_names(TINY.num_layers)
    assert [o.name for o in model.graph.output] == ["logits", "argmax"]
    attn = [n for n in model.graph.node if n.op_type == "PagedAttention"]
    assert [n.input[3:5] for n in attn] == [[f"key_cache.{i}", f"value_cache.{i}"]
                                           for i in range(TINY.num_layers)]
    assert all(len(n.output) == 1 for n in attn)  # the caches are written in place, not output
    prefill = onnx.load(str(graph.parent / PREFILL_MODEL_FILE), load_external_data=False)
    assert [i.name for i in prefill.graph.input][:8] == [
        "input_ids", "logit_index", "pair_order", "pair_inverse", "pair_cu", "pair_past",
        "pair_table", "pair_slots"]
    ops = Counter(n.op_type for n in prefill.graph.node)
    # per layer the pairs' rows are gathered into pair order and the output back
    assert ops["PagedAttention"] == TINY.num_layers and ops["Gather"] == 2 + 2 * TINY.num_layers


class _Recorder:
    """Stands in for an IOBinding: what was bound where."""

    def __init__(self) -> None:
        self.inputs: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.outputs: dict[str, tuple[int, tuple[int, ...]]] = {}

    def bind_input(self, name: str, dev: str, i: int, t: object, shape: list[int],
                   ptr: int) -> None:
        self.inputs[name] = (ptr, tuple(shape))

    def bind_output(self, name: str, dev: str, i: int, t: object, shape: list[int],
                    ptr: int) -> None:
        self.outputs[name] = (ptr, tuple(shape))


class _PagedStub:
    """A paged session that records its binding and runs nothing (the CPU EP cannot)."""

    def __init__(self, dims: dict[str, int]) -> None:
        self.dims = dims
        self.runs: list[_Recorder] = []

    def io_binding(self) -> _Recorder:
        return _Recorder()

    def run_with_iobinding(self, binding: _Recorder) -> None:
        self.runs.append(binding)


@pytest.fixture()
def stubs(fake_host_ort: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_PagedStub]]:
    made: list[_PagedStub] = []

    def factory(path: Path, device: int, dims: dict[str, int], capture: bool = True) -> object:
        assert path.name == PAGED_MODEL_FILE
        made.append(_PagedStub(dims))
        return made[-1]

    plain = ort_cuda._session

    def session(path: Path, device: int) -> object:
        if path.name != PREFILL_MODEL_FILE:
            return plain(path, device)
        made.append(_PagedStub({}))
        return made[-1]

    monkeypatch.setattr(ort_cuda, "_graph_session", factory)
    monkeypatch.setattr(ort_cuda, "_session", session)
    yield made


def _int64_at(ptr: int, n: int) -> list[int]:
    return np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(ptr)).tolist()


@pytest.mark.parametrize("device_sampling", [True, False])
def test_executor_binds_the_pool_slabs_and_skips_the_scatter(stubs: list[_PagedStub],
                                                             graph: Path,
                                                             device_sampling: bool) -> None:
    """A prefill step through the paged prefill graph: its pair arrays; a decode step through
    a paged bucket: the slot mapping (-1 on pad rows) and tables with the new token's block;
    both: every layer's K/V slab bound at its plane of the pool, no new_kv output and no scatter
    afterwards (the pool is untouched by the stubs), whether tokens are chosen on the device
    or the host (the two finishes)."""
    ex = ort_cuda.OrtCudaExecutor(graph, TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                  max_context=TINY.max_position_embeddings,
                                  limits=StepLimits(64, 4, TINY.max_position_embeddings),
                                  cuda_graphs=True, device_sampling=device_sampling)
    try:
        io = ex.device_io
        g = io.geometry
        prefill_stub, buckets = stubs[0], stubs[1:]
        dims = {(s.dims["B"], s.dims["pool_blocks"]) for s in buckets}
        assert dims == {(b, g.num_kv_heads * NUM_BLOCKS) for b in (1, 2, 4)}  # start-up buckets
        prefill = StepPlan(0, [ScheduledSeq(0, [1, 2, 3, 4], 0, [5, 9], True),
                               ScheduledSeq(1, [6, 7], 0, [3], True)])
        before = np.empty(g.shape, g.np_dtype)
        io.pool.buffer.copy_to_host(before, io.stream)
        runs = ex.paged_runs
        ex.execute(prefill)
        bound = prefill_stub.runs[-1]
        assert set(bound.outputs) == {"logits", "argmax"}
        slots_ptr, shape = bound.inputs["pair_slots"]
        heads = np.arange(g.num_kv_heads) * NUM_BLOCKS * BLOCK_SIZE
        want = np.concatenate([5 * BLOCK_SIZE + np.arange(4) + h for h in heads]
                              + [3 * BLOCK_SIZE + np.arange(2) + h for h in heads])
        assert _int64_at(slots_ptr, shape[0]) == want.tolist()
        slab = (g.num_kv_heads * NUM_BLOCKS, BLOCK_SIZE, 1, g.head_dim)
        assert bound.inputs["key_cache.1"] == (io.pool.ptr + 2 * g.plane_stride * g.itemsize,
                                               slab)
        decode = StepPlan(1, [ScheduledSeq(0, [8], 4, [5, 9], True),
                              ScheduledSeq(1, [9], 2, [3], True),
                              ScheduledSeq(2, [1], 0, [7], True)])
        ex.execute(decode)
        after = np.empty(g.shape, g.np_dtype)
        io.pool.buffer.copy_to_host(after, io.stream)
        io.stream.synchronize()
        assert ex.paged_runs == runs + 2 and np.array_equal(before, after)
        (stub,) = [s for s in buckets if s.dims["B"] == 4]
        bound = stub.runs[-1]
        for plane, name in enumerate(cache_input_names(TINY.num_layers)):
            assert bound.inputs[name] == (io.pool.ptr + plane * g.plane_stride * g.itemsize, slab)
        assert set(bound.outputs) == {"logits", "argmax"}
        slot_ptr, shape = bound.inputs["slot_mapping"]
        want = [s.block_table[s.start_pos // BLOCK_SIZE] * BLOCK_SIZE + s.start_pos % BLOCK_SIZE
                for s in decode.seqs]
        assert shape == (4,) and _int64_at(slot_ptr, 4) == [*want, -1]
        tables_ptr, tables_shape = bound.inputs["block_tables"]
        rows = np.array(_int64_at(tables_ptr, int(np.prod(tables_shape)))).reshape(tables_shape)
        assert rows[:3, 0].tolist() == [5, 3, 7]  # row 2 (no past): its new token's block
    finally:
        ex.close()
