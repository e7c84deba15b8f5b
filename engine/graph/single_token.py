"""The decoder layer of the single-token CPU graph (`model_q4.onnx`, engine/builder.py): the
executor runs it only for graph calls of exactly one token, so T = B = Tq = 1, the pad/unpad
gathers are identities and [T, heads, D] <-> [heads, T, D] is a free reshape.

At one token a step is a chain of ~2,000 small onnxruntime nodes, and their per-node cost, not the
4-bit arithmetic, is what separates it from its matmul roofline. This layer writes ~20 fewer nodes
than the general one (engine/builder.py `_decoder_layer`) for the same math:
- the residual Adds fold into the next norm: com.microsoft SkipSimplifiedLayerNormalization
  (output 3 is input + skip, the new residual stream), which onnxruntime does not fuse by itself;
- gate and up are one MatMulNBits (the "gate_up" linear) and a Split;
- q, k and v stay [1, heads, 1, D] (the opset-23 RotaryEmbedding's 4-D layout): no Transposes;
- attention without the pad/unpad Gathers, the new token's value weighted by a Mul.
Everything here is CPU-only (com.microsoft ops): the GPU graphs never use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.config import ModelConfig
from engine.graph.attention import StepTensors, gather_past
from engine.graph.linears import LinearFn
from engine.graph.quant import MS_DOMAIN
from engine.graph.writer import GraphWriter


LayerRefs = tuple[int, tuple[str, str], LinearFn]  # index, (input, post-attention norm), linears


@dataclass(frozen=True, slots=True)
class SingleStep:
    """Values of one single-token step shared by every layer."""

    st: StepTensors
    rope: tuple[str, str]  # cos, sin [1, 1, D/2] (rope_half_tables)
    bias: str  # additive mask [1, 1, 1, S + 1]


def single_step(g: GraphWriter, st: StepTensors, rope: tuple[str, str]) -> SingleStep:
    return SingleStep(st, rope, g.op("Reshape", [st.bias, g.i64([1, 1, 1, -1])]))


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


def single_token_decoder(g: GraphWriter, config: ModelConfig,
                         step: tuple[StepTensors, tuple[str, str]], x: str,
                         layers: Iterable[LayerRefs], new_kv: list[str], final_norm: str) -> str:
    """The layers over the embedded token x [1, hidden] and the final norm -> [1, hidden];
    `step` = (the step's tensors, RoPE cos and sin)."""
    one = single_step(g, *step)
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
    k, v = (g.op("Reshape", [t, g.i64([kvh, 1, 1, d])]) for t in (k, v))  # [KVH, 1, 1, D]
    new_kv += [k, v]
    attn = _attention(g, step, config, index, (q, k, v))  # [1, H*D]
    n, x = skip_norm(g, Residual(x, linear(attn, "o")), norms[1], eps)
    gate, up = g.op_n("Split", [linear(n, "gate_up"), g.i64([config.intermediate_size] * 2)],
                      outputs=2, axis=-1)  # [1, F] each
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    return Residual(x, linear(act, "down"))


def _attention(g: GraphWriter, step: SingleStep, config: ModelConfig, index: int,
               qkv: tuple[str, str, str]) -> str:
    """q [1, H, 1, D], k and v [KVH, 1, 1, D] (roped) -> [1, H * D]; the past read from the pool
    as in the general graph, past and new scored apart and sharing one softmax."""
    kvh, grp, d = config.num_kv_heads, config.group_size, config.head_dim
    q, k, v = qkv
    st = step.st
    qg = g.op("Reshape", [q, g.i64([kvh, 1, grp, d])])  # [KVH, 1, G, D]
    k_past = gather_past(g, st, index, 0, d, kvh)  # [KVH, 1, S, D]
    v_past = gather_past(g, st, index, 1, d, kvh)
    s_past = g.op("MatMul", [qg, g.op("Transpose", [k_past], perm=[0, 1, 3, 2])])  # [.., G, S]
    s_new = g.op("MatMul", [qg, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # [KVH, 1, G, 1]
    scores = g.op("Concat", [s_past, s_new], axis=-1)  # [KVH, 1, G, S + 1]
    probs = g.op("Softmax", [g.op("Add", [scores, step.bias])], axis=-1)
    p_past, p_new = g.op_n("Split", [probs, st.split_sizes], outputs=2, axis=-1)
    out = g.op("Add", [g.op("MatMul", [p_past, v_past]), g.op("Mul", [p_new, v])])
    return g.op("Reshape", [out, g.i64([1, -1])])  # [1, H*D]

