"""The decode graph (`model_decode.onnx`, engine/builder.py): what the ONNX Runtime CUDA
executor's decode buckets run (every row one new token, T = B), and its steps of a single
sequence (B = 1, any number of new tokens: a prompt or a chunk of one, after a past or not).
Every row has the same number of new tokens, Tq = T / B.

A decode step at small batch is a chain of small kernels (one row's weights are read in ~0.1 ms
on an H200; the general graph's captured step took ~2.9 ms over 1,074 kernels), so each layer is
written with as few nodes as the math allows, in com.microsoft ops the CUDA EP runs fused:
- attention is one GroupQueryAttention: the packed QKV in, RoPE inside (`do_rotary`; cos/sin of
  every position below max_position_embeddings are constants), the past gathered from the pool
  straight into [B, KVH, S, D] (the block-table index laid out batch-major: no Transpose). The
  op appends each row's new K/V after its own past length (`seqlens_k` = the last new token's
  position, past_len + Tq - 1) and attends causally over that length only (flash attention on
  the CUDA EP in fp16 / bf16). The roped new K and V are read back out of its present outputs at
  those positions (GatherElements) for the pool's scatter: one [L*2*B, KVH, Tq, D] stack and one
  Transpose for the whole step make `new_kv`;
- the residual Adds fold into the next norm (SkipSimplifiedLayerNormalization, whose output 3
  is the new residual stream), SiLU is QuickGelu (alpha 1), gate and up are one GEMM and a
  Split;
- the hidden stream is [B, Tq, hidden] (GroupQueryAttention's [B, S, hidden]).

The general graph's opset-23 `Attention` path (engine/graph/attention.py) instead transposes
the padded past, concatenates the new K/V, builds a mask and scores every padded slot. ONNX
Runtime refuses GroupQueryAttention over several new tokens per row with a past in a batch of
more than one ("batch_size must be 1 when sequence_length > 1 and past context is given"), so
prefill steps of several sequences stay on the general graph. GroupQueryAttention's RoPE needs
a head dim that is a multiple of 16: no decode graph is built otherwise. Pad rows of a bucket
(past_len 0) attend to their one slot. The 1/sqrt(D) scale is folded into the query weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from engine.config import ModelConfig
from engine.graph.attention import StepInputs
from engine.graph.layers import rope_cos_sin
from engine.graph.single_token import LayerRefs, Residual, rotary_gqa, skip_norm, swiglu_gate_up
from engine.graph.writer import GraphWriter

DECODE_MODEL_FILE = "model_decode.onnx"
DECODE_DATA_FILE = "model_decode.onnx.data"


@dataclass(frozen=True, slots=True)
class GqaStep:
    """Values of one decode step shared by every layer's GroupQueryAttention."""

    inputs: StepInputs
    pool_index: list[str]  # 2L tensors int64 [B, KVH, MB]: rows of kv_cache, (layer, K|V) order
    past_shape: str  # int64 [4] = [B, KVH, S, D]
    seqlens_k: str  # int32 [B]: the last new token's position in each row (past_len + Tq - 1)
    total_len: str  # int32 scalar: S + Tq (the op's present length)
    new_index: str  # int64 [B, KVH, Tq, D]: each new token's position (GatherElements on present)
    rows_shape: str  # int64 [3] = [B, Tq, hidden]
    kv_shape: str  # int64 [5] = [2L, B, KVH, Tq, D]: the stacked new K/V
    cos: str  # [max_position_embeddings, D/2] in the graph's dtype
    sin: str


def gqa_step(g: GraphWriter, config: ModelConfig, inp: StepInputs, block_size: int,
             dtype: np.dtype) -> GqaStep:
    """Batch-major pool rows ((layer * 2 + kv) * KVH + head) * NB + block, the op's length
    inputs and the RoPE tables, once per step."""
    kvh, layers, d = config.num_kv_heads, config.num_layers, config.head_dim
    zero = g.i64(0)
    batch = g.op("Gather", [g.op("Shape", [inp.block_tables]), zero])  # scalar B
    mb = g.op("Gather", [g.op("Shape", [inp.block_tables]), g.i64(1)])  # scalar MB
    nb = g.op("Div", [g.op("Gather", [g.op("Shape", [inp.kv_cache]), zero]),
                      g.i64(2 * layers * kvh)])
    base = np.arange(2 * layers * kvh, dtype=np.int64).reshape(2 * layers, 1, kvh, 1)
    offsets = g.op("Mul", [g.const(base, np.int64, "gqa_pool_base"), nb])  # [2L, 1, KVH, 1]
    rows = g.op("Add", [g.op("Unsqueeze", [inp.block_tables, g.i64([0, 2])]), offsets])
    parts = g.op_n("Split", [rows, g.i64([1] * (2 * layers))], outputs=2 * layers, axis=0,
                   name_hint="gqa_pool_index")  # each [1, B, KVH, MB]
    pool_index = [g.op("Squeeze", [p, g.i64([0])]) for p in parts]  # each [B, KVH, MB]
    b1 = g.op("Unsqueeze", [batch, g.i64([0])])
    tq = g.op("Div", [g.op("Gather", [g.op("Shape", [inp.unpad_index]), zero]), batch])  # T / B
    last = g.op("Add", [inp.past_lens, g.op("Sub", [tq, g.i64(1)])])  # [B] past_len + Tq - 1
    total = g.op("Add", [g.op("Mul", [mb, g.i64(block_size)]), tq])  # scalar S + Tq
    new_pos = g.op("Add", [g.op("Reshape", [inp.past_lens, g.i64([-1, 1, 1, 1])]),
                           g.op("Reshape", [g.op("Range", [zero, tq, g.i64(1)]),
                                            g.i64([1, 1, -1, 1])])])  # [B, 1, Tq, 1]
    tq1 = g.op("Unsqueeze", [tq, g.i64([0])])
    new_index = g.op("Expand", [new_pos, g.op("Concat", [b1, g.i64([kvh]), tq1, g.i64([d])],
                                                 axis=0)])
    cos, sin = rope_cos_sin(config, config.max_position_embeddings)
    return GqaStep(inputs=inp, pool_index=pool_index,
                   past_shape=g.op("Concat", [b1, g.i64([kvh, -1, d])], axis=0),
                   seqlens_k=g.op("Cast", [last], to=TensorProto.INT32),
                   total_len=g.op("Cast", [total], to=TensorProto.INT32), new_index=new_index,
                   cos=g.const(cos, dtype, "gqa_rope_cos"), sin=g.const(sin, dtype, "gqa_rope_sin"),
                   rows_shape=g.op("Concat", [b1, tq1, g.i64([config.hidden_size])], axis=0),
                   kv_shape=g.op("Concat", [g.i64([2 * layers]), b1, g.i64([kvh]), tq1,
                                            g.i64([d])], axis=0))


def decode_decoder(g: GraphWriter, config: ModelConfig, step: GqaStep, x: str,
                   layers: Iterable[LayerRefs], final_norm: str) -> str:
    """The layers over the embedded tokens x [T, hidden] and the final norm -> [T, hidden];
    writes the graph output `new_kv` [L, 2, KVH, T, D]."""
    kvh, d = config.num_kv_heads, config.head_dim
    res = Residual(g.op("Reshape", [x, step.rows_shape]))  # [B, Tq, hidden]
    new_kv: list[str] = []
    for layer in layers:
        res = decode_layer(g, config, step, layer, res, new_kv)
    normed = skip_norm(g, res, final_norm, config.rms_norm_eps)[0]  # [B, Tq, hidden]
    kv = g.op("Reshape", [g.concat_capped(new_kv), step.kv_shape])
    kv = g.op("Transpose", [kv], perm=[0, 2, 1, 3, 4])  # [2L, KVH, B, Tq, D]
    g.op_to("Reshape", [kv, g.i64([config.num_layers, 2, kvh, -1, d])], "new_kv")
    return g.op("Reshape", [normed, g.i64([-1, config.hidden_size])])


def decode_layer(g: GraphWriter, config: ModelConfig, step: GqaStep, layer: LayerRefs,
                 res: Residual, new_kv: list[str]) -> Residual:
    """One decoder layer over the stream [B, Tq, hidden]; appends its new K and V, each
    [B, KVH, Tq, D], to `new_kv`."""
    index, norms, linear = layer
    eps = config.rms_norm_eps
    n, x = skip_norm(g, res, norms[0], eps)
    past = [g.op("Reshape", [g.op("Gather", [step.inputs.kv_cache, step.pool_index[2 * index + kv]],
                                  axis=0), step.past_shape])  # [B, KVH, S, D]
            for kv in (0, 1)]
    attn, present_k, present_v = rotary_gqa(  # [B, Tq, H*D], [B, KVH, S + Tq, D] x 2
        g, config, [linear(n, "qkv"), *past, step.seqlens_k, step.total_len, step.cos, step.sin])
    new_kv += [g.op("GatherElements", [p, step.new_index], axis=2)  # [B, KVH, Tq, D]
               for p in (present_k, present_v)]
    n, x = skip_norm(g, Residual(x, linear(attn, "o")), norms[1], eps)
    return Residual(x, swiglu_gate_up(g, config, n, linear))
