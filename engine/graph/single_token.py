"""The single-token CPU graph (`model_q4.onnx`, engine/builder.py): the executor runs it only for
graph calls of exactly one token with a past (single-sequence decode), so T = B = S = 1.

At one token a step is a chain of small onnxruntime nodes, and their per-node cost, not the 4-bit
arithmetic, separates it from its matmul roofline. So the layer is written for one token with as
few nodes as the same math allows:
- attention is one com.microsoft GroupQueryAttention: packed QKV in, RoPE inside (`do_rotary`;
  cos/sin of every position below max_position_embeddings are constants), and the past read
  from and the token's K/V written into one buffer per layer and K|V: the inputs
  `past_key_{i}` / `past_value_{i}` and the outputs `present_key_{i}` / `present_value_{i}`,
  [1, KVH, S, D], which the executor binds to the same memory (its mirror of the sequence's
  past, engine/executors/past_mirror.py). Past and present sharing a buffer, the op writes the
  token's K/V at its position (`seqlens_k` = the past length) and attends over the positions up
  to it only: no copy, no mask, and S (the buffer's capacity) is the same every step;
- the residual Adds fold into the next norm: com.microsoft SkipSimplifiedLayerNormalization
  (output 3 is input + skip, the new residual stream), which onnxruntime does not fuse by itself;
- gate and up are one MatMulNBits (the "gate_up" linear) and a Split; SiLU is com.microsoft
  QuickGelu with alpha 1 (x * sigmoid(x) in one node);
- the hidden stream is [1, 1, hidden] (GroupQueryAttention's [B, S, hidden]): no reshapes
  between layers.
The GPU decode graph (engine/graph/gqa.py) shares `Residual`, `skip_norm`, `rotary_gqa` and
`swiglu_gate_up`; the rest is the CPU single-token graph's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from engine.config import ModelConfig
from engine.graph.layers import rope_cos_sin
from engine.graph.linears import LinearFn
from engine.graph.quant import MS_DOMAIN
from engine.graph.writer import GraphWriter

LayerRefs = tuple[int, tuple[str, str], LinearFn]  # index, (input, post-attention norm), linears

PAST_KEY, PAST_VALUE = "past_key_{}", "past_value_{}"
PRESENT_KEY, PRESENT_VALUE = "present_key_{}", "present_value_{}"
SINGLE_TOKEN_FEEDS = ("input_ids", "positions", "logit_index")  # the step's own inputs


def past_input_names(num_layers: int) -> list[str]:
    """The per-layer past inputs, in (layer, K|V) order: past_key_0, past_value_0, ..."""
    return [name.format(i) for i in range(num_layers) for name in (PAST_KEY, PAST_VALUE)]


def present_output_names(num_layers: int) -> list[str]:
    """The per-layer present outputs (the past buffers, written), in (layer, K|V) order."""
    return [name.format(i) for i in range(num_layers) for name in (PRESENT_KEY, PRESENT_VALUE)]


def supports_gqa_rope(config: ModelConfig) -> bool:
    """GroupQueryAttention's RoPE needs a head dim that is a multiple of 16 (this graph and the
    GPU decode graph, engine/graph/gqa.py, both use it)."""
    return config.head_dim % 16 == 0


def rotary_gqa(g: GraphWriter, config: ModelConfig, inputs: list[str],
               names: list[str] | None = None) -> list[str]:
    """One com.microsoft GroupQueryAttention over packed QKV with RoPE inside (`do_rotary`,
    rotate-half): inputs (qkv, past K, past V, seqlens_k, total_len, cos, sin) -> (out,
    present K, present V). scale = 1: 1/sqrt(D) is folded into Q's rows."""
    qkv, *rest = inputs
    return g.op_n("GroupQueryAttention", [qkv, "", "", *rest], outputs=3, names=names,
                  domain=MS_DOMAIN, num_heads=config.num_heads,
                  kv_num_heads=config.num_kv_heads, scale=1.0, do_rotary=1,
                  rotary_interleaved=0)


def single_token_io(config: ModelConfig, elem: int) -> tuple[list, list]:
    """Inputs: input_ids, positions, logit_index and every layer's past buffer [1, KVH, S, D];
    outputs: logits and every layer's present buffer (the same shape, the same memory)."""
    i64, vi = TensorProto.INT64, helper.make_tensor_value_info
    buffer = [1, config.num_kv_heads, "S", config.head_dim]
    inputs = [vi("input_ids", i64, [1]), vi("positions", i64, [1]), vi("logit_index", i64, ["R"]),
              *(vi(name, elem, buffer) for name in past_input_names(config.num_layers))]
    outputs = [vi("logits", TensorProto.FLOAT, ["R", config.vocab_size]),
               *(vi(name, elem, buffer) for name in present_output_names(config.num_layers))]
    return inputs, outputs


@dataclass(frozen=True, slots=True)
class SingleStep:
    """Values of one single-token step shared by every layer's GroupQueryAttention."""

    seqlens_k: str  # int32 [1]: the token's position (= the past length)
    total_len: str  # int32 [1]: the position + 1
    cos: str  # float32 [max_position_embeddings, D/2]
    sin: str


def single_step(g: GraphWriter, config: ModelConfig) -> SingleStep:
    seqlens = g.op("Cast", ["positions"], to=TensorProto.INT32)
    cos, sin = rope_cos_sin(config, config.max_position_embeddings)
    return SingleStep(seqlens, g.op("Add", [seqlens, g.const([1], np.int32)]),
                      g.const(cos, np.float32, "rope_cos_cache"),
                      g.const(sin, np.float32, "rope_sin_cache"))


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


def silu_mul(g: GraphWriter, gate: str, up: str) -> str:
    """SwiGLU's silu(gate) * up, SiLU as com.microsoft QuickGelu (alpha 1): x * sigmoid(x)."""
    return g.op("Mul", [g.op("QuickGelu", [gate], domain=MS_DOMAIN, alpha=1.0), up])


def single_token_decoder(g: GraphWriter, config: ModelConfig, x: str,
                         layers: Iterable[LayerRefs], final_norm: str) -> str:
    """The layers over the embedded token x [1, hidden] and the final norm -> [1, hidden]."""
    step = single_step(g, config)
    res = Residual(g.op("Unsqueeze", [x, g.i64([0])]))  # [1, 1, hidden]
    for layer in layers:
        res = single_token_layer(g, config, step, layer, res)
    normed = skip_norm(g, res, final_norm, config.rms_norm_eps)[0]
    return g.op("Reshape", [normed, g.i64([1, config.hidden_size])])


def single_token_layer(g: GraphWriter, config: ModelConfig, step: SingleStep,
                       layer: LayerRefs, res: Residual) -> Residual:
    """One decoder layer over the stream [1, 1, hidden]; writes the token's K and V into the
    layer's present buffers."""
    index, norms, linear = layer
    eps = config.rms_norm_eps
    n, x = skip_norm(g, res, norms[0], eps)
    attn, _, _ = rotary_gqa(
        g, config, [linear(n, "qkv"), PAST_KEY.format(index), PAST_VALUE.format(index),
                    step.seqlens_k, step.total_len, step.cos, step.sin],
        names=[g.name("attn"), PRESENT_KEY.format(index), PRESENT_VALUE.format(index)])
    n, x = skip_norm(g, Residual(x, linear(attn, "o")), norms[1], eps)
    return Residual(x, swiglu_gate_up(g, config, n, linear))


def swiglu_gate_up(g: GraphWriter, config: ModelConfig, n: str, linear: LinearFn) -> str:
    """down(silu(gate(n)) * up(n)) with gate and up as ONE GEMM ("gate_up") and a Split."""
    gate, up = g.op_n("Split", [linear(n, "gate_up"), g.i64([config.intermediate_size] * 2)],
                      outputs=2, axis=-1)
    return linear(silu_mul(g, gate, up), "down")
