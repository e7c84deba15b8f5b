"""The single-token CPU graph (`model_q4.onnx`, engine/builder.py): the executor runs it only for
graph calls of exactly one token with a past (single-sequence decode), so T = B = Tq = 1 and
[T, heads, D] <-> [heads, T, D] is a free reshape.

At one token a step is a chain of ~1,000 small onnxruntime nodes, and their per-node cost and the
copies between them, not the 4-bit arithmetic, separate it from its matmul roofline. So the
layer is written for one token, with fewer nodes than the general one (engine/builder.py
`_decoder_layer`) for the same math:
- the past is not gathered from the paged pool: each layer's past K and V are graph inputs
  `past_key_{i}` / `past_value_{i}` of shape [S, KVH, D], bound in place from the executor's
  contiguous copy of that one sequence's past (engine/executors/past_mirror.py); S >= the past
  length, the slots from the token's position on masked. FusedMatMul's transBatchB reads
  [S, KVH, D] as [KVH, S, D] without a transpose;
- the residual Adds fold into the next norm: com.microsoft SkipSimplifiedLayerNormalization
  (output 3 is input + skip, the new residual stream), which onnxruntime does not fuse by itself;
- gate and up are one MatMulNBits (the "gate_up" linear) and a Split;
- q, k and v stay [1, heads, 1, D] (the opset-23 RotaryEmbedding's 4-D layout): no Transposes;
- the new token's key is scored apart and its value weighted by a Mul (past and new share one
  softmax), so the past is never concatenated.
Everything here is CPU-only (com.microsoft ops): the GPU graphs never use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from engine.config import ModelConfig
from engine.graph.linears import LinearFn
from engine.graph.quant import MS_DOMAIN
from engine.graph.writer import GraphWriter


LayerRefs = tuple[int, tuple[str, str], LinearFn]  # index, (input, post-attention norm), linears


PAST_KEY, PAST_VALUE = "past_key_{}", "past_value_{}"


def past_input_names(num_layers: int) -> list[str]:
    """The per-layer past inputs, in (layer, K|V) order: past_key_0, past_value_0, ..."""
    return [name.format(i) for i in range(num_layers) for name in (PAST_KEY, PAST_VALUE)]


def single_token_io(config: ModelConfig, elem: int) -> tuple[list, list]:
    """The single-token graph's inputs (input_ids, positions, logit_index and the past K/V of
    every layer, [S, KVH, D]) and its outputs (those of the dense graph without argmax)."""
    i64, vi = TensorProto.INT64, helper.make_tensor_value_info
    past = [vi(name, elem, ["S", config.num_kv_heads, config.head_dim])
            for name in past_input_names(config.num_layers)]
    inputs = [vi("input_ids", i64, [1]), vi("positions", i64, [1]),
              vi("logit_index", i64, ["R"]), *past]
    outputs = [vi("logits", TensorProto.FLOAT, ["R", config.vocab_size]),
               vi("new_kv", elem, [config.num_layers, 2, config.num_kv_heads, 1,
                                   config.head_dim])]
    return inputs, outputs


@dataclass(frozen=True, slots=True)
class SingleStep:
    """Values of one single-token step shared by every layer."""

    rope: tuple[str, str]  # cos, sin [1, 1, D/2] (rope_half_tables)
    split_sizes: str  # int64 [2] = [S, 1]: past and new score columns
    bias: str  # float32 [S + 1]: 0 for the past below the token's position and the token,
    #            -1e30 for the bound slots past it


def single_step(g: GraphWriter, rope: tuple[str, str]) -> SingleStep:
    past = g.op("Slice", [g.op("Shape", [PAST_KEY.format(0)]), g.i64([0]), g.i64([1])])  # [S]
    slots = g.op("Range", [g.i64(0), g.op("Squeeze", [past, g.i64([0])]), g.i64(1)])  # [S]
    valid = g.op("Less", [slots, "positions"])  # the token's position = its past length
    bias = g.op("Where", [valid, g.const(0.0, np.float32), g.const(-1e30, np.float32)])
    return SingleStep(rope, g.op("Concat", [past, g.i64([1])], axis=0),
                      g.op("Concat", [bias, g.const(np.zeros(1), np.float32)], axis=0))


@dataclass(frozen=True, slots=True)
class Residual:
    """The residual stream as (x, delta): its value is x + delta; delta None means x alone."""

    x: str
    delta: str | None = None


def skip_norm(g: GraphWriter, res: Residual, weight: str, eps: float) -> tuple[str, str]:
    """RMSNorm of x + delta -> (normed, x + delta): one node."""
    if res.delta is None:
        normed = g.op("SimplifiedLayerNormalization", [res.x, weight], axis=-1, epsilon=eps)
        return normed, res.x
    normed, _, _, total = g.op_n("SkipSimplifiedLayerNormalization", [res.delta, res.x, weight],
                                 outputs=4, domain=MS_DOMAIN, epsilon=eps)
    return normed, total


def single_token_decoder(g: GraphWriter, config: ModelConfig, rope: tuple[str, str], x: str,
                         layers: Iterable[LayerRefs], new_kv: list[str], final_norm: str) -> str:
    """The layers over the embedded token x [1, hidden] and the final norm -> [1, hidden];
    `rope` = RoPE cos and sin of the token's position."""
    one = single_step(g, rope)
    res = Residual(x)
    for layer in layers:
        res = single_token_layer(g, config, one, layer, res, new_kv)
    return skip_norm(g, res, final_norm, config.rms_norm_eps)[0]


def single_token_layer(g: GraphWriter, config: ModelConfig, step: SingleStep,
                       layer: LayerRefs, res: Residual,
                       new_kv: list[str]) -> Residual:
    """One decoder layer at T = 1; `layer` = (index, (input, post-attention norm weights),
    linears); appends this token's K and V ([KVH, 1, 1, D] each: concatenated along axis 0 and
    reshaped like the general graph's [KVH, T, D] parts) to new_kv."""
    index, norms, linear = layer
    h, kvh, d, eps = config.num_heads, config.num_kv_heads, config.head_dim, config.rms_norm_eps
    n, x = skip_norm(g, res, norms[0], eps)
    qkv = g.op("Reshape", [linear(n, "qkv"), g.i64([1, h + 2 * kvh, 1, d])])  # [1, H+2KVH, 1, D]
    qk, v = g.op_n("Split", [qkv, g.i64([h + kvh, kvh])], outputs=2, axis=1)
    qk = g.op("RotaryEmbedding", [qk, *step.rope], interleaved=0)  # [1, H+KVH, 1, D]
    q, k = g.op_n("Split", [qk, g.i64([h, kvh])], outputs=2, axis=1)
    k, v = (g.op("Reshape", [t, g.i64([kvh, 1, d])]) for t in (k, v))  # [KVH, 1, D]
    new_kv += [k, v]
    attn = _attention(g, step, config, index, (q, k, v))  # [1, H*D]
    n, x = skip_norm(g, Residual(x, linear(attn, "o")), norms[1], eps)
    gate, up = g.op_n("Split", [linear(n, "gate_up"), g.i64([config.intermediate_size] * 2)],
                      outputs=2, axis=-1)  # [1, F] each
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    return Residual(x, linear(act, "down"))


def _attention(g: GraphWriter, step: SingleStep, config: ModelConfig, index: int,
               qkv: tuple[str, str, str]) -> str:
    """q [1, H, 1, D], k and v [KVH, 1, D] (roped) -> [1, H * D]; the past read in place
    from the layer's [S, KVH, D] inputs, past and new scored apart and sharing one softmax."""
    kvh, grp, d = config.num_kv_heads, config.group_size, config.head_dim
    q, k_new, v_new = qkv
    qg = g.op("Reshape", [q, g.i64([kvh, grp, d])])  # [KVH, G, D]
    k_past, v_past = PAST_KEY.format(index), PAST_VALUE.format(index)  # [S, KVH, D]
    s_past = g.op("FusedMatMul", [qg, k_past], domain=MS_DOMAIN, transB=1,
                  transBatchB=1)  # [KVH, G, S]
    s_new = g.op("FusedMatMul", [qg, k_new], domain=MS_DOMAIN, transB=1)  # [KVH, G, 1]
    scores = g.op("Add", [g.op("Concat", [s_past, s_new], axis=-1), step.bias])
    probs = g.op("Softmax", [scores], axis=-1)
    p_past, p_new = g.op_n("Split", [probs, step.split_sizes], outputs=2, axis=-1)
    out_past = g.op("FusedMatMul", [p_past, v_past], domain=MS_DOMAIN,
                    transBatchB=1)  # [KVH, G, D]
    out = g.op("Add", [out_past, g.op("Mul", [p_new, v_new])])
    return g.op("Reshape", [out, g.i64([1, -1])])  # [1, H*D]
