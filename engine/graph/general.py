"""The general step graph's decoder (`model.onnx`, engine/builder.py): any step (prefill,
decode, mixed chunks) over packed tokens [T, hidden], attention over the paged pool by block
table (engine/graph/attention.py), RoPE decomposed or as the opset-23 RotaryEmbedding op."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from engine.config import ModelConfig
from engine.graph.attention import StepInputs, StepTensors, attention, step_tensors
from engine.graph.layers import (
    apply_rope,
    apply_rope_op,
    rms_norm,
    rope_half_tables,
    rope_tables,
    swiglu_mlp,
)
from engine.graph.single_token import LayerRefs
from engine.graph.writer import GraphWriter

STEP_INPUTS = StepInputs(kv_cache="kv_cache", block_tables="block_tables", past_lens="past_lens",
                         pad_index="pad_index", unpad_index="unpad_index")


@dataclass(frozen=True, slots=True)
class GeneralGraph:
    """How the general graph is written."""

    dtype: np.dtype
    block_size: int
    attention: str  # one of engine.graph.attention.ATTENTION_IMPLS
    rotary_op: bool


def general_decoder(g: GraphWriter, config: ModelConfig, opts: GeneralGraph, x: str,
                    layers: Iterable[LayerRefs]) -> str:
    """Any step (prefill, decode, mixed): x [T, hidden] -> [T, hidden] before the final norm
    (normed on the wanted rows only); writes new_kv."""
    cos, sin = (rope_half_tables if opts.rotary_op else rope_tables)(g, config, "positions",
                                                                     opts.dtype)
    new_kv: list[str] = []
    st = step_tensors(g, config, STEP_INPUTS, opts.block_size, opts.dtype)
    for layer in layers:
        x = decoder_layer(g, config, st, opts, layer, x, (cos, sin), new_kv)
    kv = g.concat_capped(new_kv)  # [L*2*KVH, T, D]
    g.op_to("Reshape", [kv, g.i64([config.num_layers, 2, config.num_kv_heads, -1,
                                   config.head_dim])], "new_kv")
    return x


def decoder_layer(g: GraphWriter, config: ModelConfig, st: StepTensors,
                  opts: GeneralGraph, layer: LayerRefs, x: str, rope: tuple[str, str],
                   new_kv: list[str]) -> str:
    """One layer over packed tokens x [T, hidden]; appends its new K and V [KVH, T, D]."""
    h, kvh, d = config.num_heads, config.num_kv_heads, config.head_dim
    index, norms, linear = layer
    n = rms_norm(g, x, norms[0], config.rms_norm_eps, opts.dtype)
    qkv = g.op("Reshape", [linear(n, "qkv"), g.i64([0, h + 2 * kvh, d])])
    qk, v = g.op_n("Split", [qkv, g.i64([h + kvh, kvh])], outputs=2, axis=1)
    cos, sin = rope
    if opts.rotary_op:
        qk = apply_rope_op(g, qk, cos, sin, h + kvh, d)  # [T, H+KVH, D]
    else:
        qk = apply_rope(g, qk, cos, sin, d)  # [T, H+KVH, D]
    q, k = g.op_n("Split", [qk, g.i64([h, kvh])], outputs=2, axis=1)
    k_heads = g.op("Transpose", [k], perm=[1, 0, 2])  # [KVH, T, D]
    v_heads = g.op("Transpose", [v], perm=[1, 0, 2])  # [KVH, T, D]
    new_kv += [k_heads, v_heads]
    attn = attention(g, st, config, index, q, k_heads, v_heads, opts.attention)
    x = g.op("Add", [x, linear(attn, "o")])
    n = rms_norm(g, x, norms[1], config.rms_norm_eps, opts.dtype)
    return g.op("Add", [x, swiglu_mlp(g, n, linear)])
