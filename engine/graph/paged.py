"""The paged decode graph (`model_paged.onnx`, engine/builder.py): what the ONNX Runtime CUDA
executor's decode buckets run when its CUDA EP has com.microsoft `PagedAttention`. Every row is
one new token (T = B). Attention reads the KV pool in place and writes the step's roped K/V into
it itself: no past is gathered, no present is copied, no `new_kv` is scattered after the run.

The pool is [L, 2 (K, V), KVH, NB, BS, D] (engine/device_kv_pool.py). One layer's K (or V) slab,
[KVH, NB, BS, D], is a graph input of its own, `key_cache.{l}` / `value_cache.{l}`, bound by
address into the pool and shaped [KVH * NB, BS, 1, D]: to the op, a cache of KVH * NB blocks
with ONE kv head. Each (row b, kv head h) pair is then a sequence of its own, with the `group`
query heads of head h: block table row b + h * NB, slot + h * NB * BS (-1 for pad rows: the op
writes nothing for them), past length and position those of row b. The QKV projection's
columns are grouped by kv head ([Q heads of h | K_h | V_h] for each h, weight "qkv_grouped"), so
the pairs' packed QKV is a reshape of its output, and the op's output [B * KVH, group * D]
reshapes back to [B, H * D] in head order.

The op's `attention_metadata` ([1, 0]: one new token a sequence, KV length bounded by the block
table's width) lets it choose its kernel from shapes alone, which keeps the step capturable as a
CUDA graph. RoPE is the op's (rotate-half, cos/sin of every position below
max_position_embeddings as constants); 1/sqrt(D) is folded into the query rows (scale 1).

`model_paged_prefill.onnx` runs the same layers over a step of any shape (prompts, chunks after
a past, mixed steps; uncaptured): the host orders each pair's tokens back to back
(engine/step_inputs.py `pair_feeds`); each layer gathers the projection's rows into that order
and the op's output back (`pair_order`, `pair_inverse`); its `attention_metadata` is [0, 0]
(bounds from the shapes).

I/O of the decode graph (bucket dims B rows, MB blocks a row, `pool_blocks` = KVH * NB):
  input_ids    int64 [B]; block_tables int64 [B, MB] (the new token's block included);
  past_lens    int64 [B]; slot_mapping int64 [B] (pool slot of the new token, -1: pad row);
  logit_index  int64 [R]; key_cache.{l}, value_cache.{l} dtype [pool_blocks, BS, 1, D];
outputs logits float32 [R, vocab] and argmax int64 [R]. The prefill graph takes input_ids
[T], logit_index [R] and the pair arrays in place of the row inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from engine.config import ModelConfig
from engine.graph.layers import rope_cos_sin
from engine.graph.quant import MS_DOMAIN
from engine.graph.single_token import LayerRefs, Residual, skip_norm, swiglu_gate_up
from engine.graph.writer import GraphWriter

PAGED_MODEL_FILE = "model_paged.onnx"
PAGED_DATA_FILE = "model_paged.onnx.data"
PREFILL_MODEL_FILE = "model_paged_prefill.onnx"
PREFILL_DATA_FILE = "model_paged_prefill.onnx.data"
PAIR_INPUTS = ("pair_order", "pair_inverse", "pair_cu", "pair_past", "pair_table", "pair_slots")
PAGED_STEP_INPUTS = ("input_ids", "block_tables", "past_lens", "slot_mapping", "logit_index")
PREFILL_STEP_INPUTS = ("input_ids", "logit_index", *PAIR_INPUTS)
KEY_CACHE, VALUE_CACHE = "key_cache.{}", "value_cache.{}"


def supports_paged(dtype: str, block_size: int) -> bool:
    """ONNX Runtime's PagedAttention takes fp16 / bf16 and blocks of a power of two >= 16 tokens
    (it refuses block_size 4 at run time on the CUDA EP, onnxruntime-gpu 1.31.1)."""
    return dtype != "float32" and block_size >= 16 and block_size & (block_size - 1) == 0


def cache_input_names(num_layers: int) -> list[str]:
    """The per-layer cache inputs in pool plane order: key_cache.0, value_cache.0, ..."""
    return [name.format(i) for i in range(num_layers) for name in (KEY_CACHE, VALUE_CACHE)]


def paged_io(config: ModelConfig, elem: int, argmax: bool, prefill: bool = False
             ) -> tuple[list, list]:
    """The paged graphs' inputs and outputs (see the module docstring; `prefill`: the pair
    arrays of `pair_feeds` in place of the row inputs)."""
    i64, vi = TensorProto.INT64, helper.make_tensor_value_info
    slab = ["pool_blocks", "BS", 1, config.head_dim]
    rows = ([vi("input_ids", i64, ["T"]), vi("logit_index", i64, ["R"]),
             vi("pair_order", i64, ["TP"]), vi("pair_inverse", i64, ["TP"]),
             vi("pair_cu", i64, ["P1"]), vi("pair_past", i64, ["P"]),
             vi("pair_table", i64, ["P", "MB"]), vi("pair_slots", i64, ["TP"])] if prefill else
            [vi("input_ids", i64, ["B"]), vi("block_tables", i64, ["B", "MB"]),
             vi("past_lens", i64, ["B"]), vi("slot_mapping", i64, ["B"]),
             vi("logit_index", i64, ["R"])])
    inputs = [*rows, *(vi(name, elem, slab) for name in cache_input_names(config.num_layers))]
    outputs = [vi("logits", TensorProto.FLOAT, ["R", config.vocab_size])]
    if argmax:
        outputs.append(vi("argmax", i64, ["R"]))
    return inputs, outputs


@dataclass(frozen=True, slots=True)
class PagedConsts:
    """What both paged graphs' layers share besides the step: RoPE tables and the reshapes."""

    cos: str  # [max_position_embeddings, D/2] in the graph's dtype
    sin: str
    pairs_shape: str  # int64 [2] = [-1, (group + 2) * D]: the projection as pair rows
    rows_shape: str  # int64 [2] = [-1, H * D]: the op's output back as token rows


def paged_consts(g: GraphWriter, config: ModelConfig, dtype: np.dtype) -> PagedConsts:
    cos, sin = rope_cos_sin(config, config.max_position_embeddings)
    group = config.num_heads // config.num_kv_heads
    return PagedConsts(cos=g.const(cos, dtype, "paged_rope_cos"),
                       sin=g.const(sin, dtype, "paged_rope_sin"),
                       pairs_shape=g.i64([-1, (group + 2) * config.head_dim]),
                       rows_shape=g.i64([-1, config.num_heads * config.head_dim]))


@dataclass(frozen=True, slots=True)
class PagedStep:
    """The (row, kv head) sequences of one step, shared by every layer's PagedAttention."""

    cu_seqlens: str  # int32 [P + 1] (P = B*KVH pairs): where each pair's tokens start
    past: str  # int32 [P]
    table: str  # int32 [P, MB]
    slots: str  # int32 [T*KVH]: each pair token's pool slot (-1: none)
    meta: str  # int32 [2]: [1, 0] decode, [0, 0] prefill (bounds from the shapes)
    consts: PagedConsts
    order: str | None = None  # int64 [T*KVH]: pair-major row of each token-head (prefill)
    inverse: str | None = None  # int64 [T*KVH]: its inverse


def paged_step(g: GraphWriter, config: ModelConfig, block_size: int, dtype: np.dtype
               ) -> PagedStep:
    """The pairs' block tables, slots and lengths from the row inputs, once per step."""
    kvh, i32 = config.num_kv_heads, TensorProto.INT32
    nb = g.op("Div", [g.op("Gather", [g.op("Shape", [KEY_CACHE.format(0)]), g.i64(0)]),
                      g.i64(kvh)])  # scalar NB
    heads = g.op("Mul", [g.const(np.arange(kvh).reshape(1, kvh, 1), np.int64, "paged_heads"),
                         nb])  # [1, KVH, 1]: h * NB
    mb = g.op("Gather", [g.op("Shape", ["block_tables"]), g.i64([1])])  # [1]
    table = g.op("Add", [g.op("Unsqueeze", ["block_tables", g.i64([1])]), heads])
    table = g.op("Reshape", [table, g.op("Concat", [g.i64([-1]), mb], axis=0)])
    row_heads = g.op("Reshape", [heads, g.i64([1, kvh])])  # [1, KVH]
    slot = g.op("Unsqueeze", ["slot_mapping", g.i64([1])])  # [B, 1]
    moved = g.op("Add", [slot, g.op("Mul", [row_heads, g.i64(block_size)])])
    slots = g.op("Where", [g.op("Less", [slot, g.i64(0)]), g.i64(-1), moved])  # [B, KVH]
    past = g.op("Expand", [g.op("Unsqueeze", ["past_lens", g.i64([1])]), g.i64([1, kvh])])
    n = g.op("Mul", [g.op("Gather", [g.op("Shape", ["past_lens"]), g.i64(0)]), g.i64(kvh)])
    cu = g.op("Range", [g.i64(0), g.op("Add", [n, g.i64(1)]), g.i64(1)])  # one token a pair
    return PagedStep(
        cu_seqlens=g.op("Cast", [cu], to=i32),
        past=g.op("Cast", [g.op("Reshape", [past, g.i64([-1])])], to=i32),
        table=g.op("Cast", [table], to=i32),
        slots=g.op("Cast", [g.op("Reshape", [slots, g.i64([-1])])], to=i32),
        meta=g.const([1, 0], np.int32, "paged_meta"), consts=paged_consts(g, config, dtype))


def prefill_step(g: GraphWriter, config: ModelConfig, dtype: np.dtype) -> PagedStep:
    """The pairs of a step of any shape, from the host's pair arrays (`pair_feeds`)."""
    i32 = TensorProto.INT32
    return PagedStep(
        cu_seqlens=g.op("Cast", ["pair_cu"], to=i32), past=g.op("Cast", ["pair_past"], to=i32),
        table=g.op("Cast", ["pair_table"], to=i32), slots=g.op("Cast", ["pair_slots"], to=i32),
        meta=g.const([0, 0], np.int32, "paged_meta"), consts=paged_consts(g, config, dtype),
        order="pair_order", inverse="pair_inverse")


def paged_decoder(g: GraphWriter, config: ModelConfig, step: PagedStep, x: str,
                  layers: Iterable[LayerRefs], final_norm: str) -> str:
    """The layers over the embedded tokens x [B, hidden] and the final norm -> [B, hidden]."""
    res = Residual(x)
    for layer in layers:
        res = paged_layer(g, config, step, layer, res)
    return skip_norm(g, res, final_norm, config.rms_norm_eps)[0]


def paged_layer(g: GraphWriter, config: ModelConfig, step: PagedStep, layer: LayerRefs,
                res: Residual) -> Residual:
    """One decoder layer over the stream [B, hidden]; its K/V go into the pool in place."""
    index, norms, linear = layer
    eps = config.rms_norm_eps
    n, x = skip_norm(g, res, norms[0], eps)
    c = step.consts
    pairs = g.op("Reshape", [linear(n, "qkv_grouped"), c.pairs_shape])  # [T*KVH, ...]
    if step.order is not None:  # each pair's tokens back to back
        pairs = g.op("Gather", [pairs, step.order], axis=0)
    attn = g.op("PagedAttention", [
        pairs, "", "", KEY_CACHE.format(index), VALUE_CACHE.format(index), step.cu_seqlens,
        step.past, step.table, c.cos, c.sin, step.slots, "", "", "", "", "", step.meta],
        domain=MS_DOMAIN, num_heads=config.num_heads // config.num_kv_heads, kv_num_heads=1,
        scale=1.0, do_rotary=1, rotary_interleaved=0)  # [T*KVH, group*D]
    if step.inverse is not None:
        attn = g.op("Gather", [attn, step.inverse], axis=0)
    attn = g.op("Reshape", [attn, c.rows_shape])  # [T, H*D]
    n, x = skip_norm(g, Residual(x, linear(attn, "o")), norms[1], eps)
    return Residual(x, swiglu_gate_up(g, config, n, linear))
