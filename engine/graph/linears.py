"""The layer linears of the decoder graph, handed to it one layer at a time as a function
(input [T, in], key) -> [T, out], key one of "qkv", "o", "gate", "up", "gate_up", "down",
"qkv_grouped" ("gate_up": gate and up stacked along the output dim, one GEMM for the graphs
that split it; "qkv_grouped": the qkv rows grouped by kv head, dense only, for
engine/graph/paged.py).

- dense: MatMul over transposed ([in, out]) fp32/fp16 weights (every graph);
- q4: MatMulNBits over the GGUF Q4 blocks (engine/graph/quant.py), the single-token fp32 graph,
  with float32 ("exact") or int8 ("fast") activations.

Both write the same two weight transforms: Q, K and V fused along the output dim into one qkv
weight, and 1/sqrt(head_dim) folded into the Q rows (on blocks: into their scale and minimum,
exact when head_dim is a power of 4, as 64 is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from engine.config import ModelConfig
from engine.dtypes import EXACT, FAST
from engine.graph.quant import block_sums, q4_linear, q8_linear
from engine.graph.writer import GraphWriter
from engine.loaders.gguf_q4 import HEAD, Q4Blocks, concat_rows, head_parts, join_q8_0

LinearFn = Callable[[str, str], str]  # (input value, key) -> output value
LinearsFactory = Callable[[GraphWriter, int], LinearFn]  # (writer, layer) -> its linears
HeadFn = Callable[[GraphWriter, str], str]  # (writer, normed rows [R, hidden]) -> [R, vocab]
_NAMES = {"qkv": "self_attn.qkv", "o": "self_attn.o_proj", "gate": "mlp.gate_proj",
          "up": "mlp.up_proj", "down": "mlp.down_proj", "gate_up": "mlp.gate_up_proj",
          "qkv_grouped": "self_attn.qkv_grouped"}


def query_scale(config: ModelConfig) -> float:
    return 1.0 / float(np.sqrt(config.head_dim))


def dense_linears(config: ModelConfig, weights: Mapping[str, np.ndarray],
                  dtype: np.dtype) -> LinearsFactory:
    """Each layer's weights written transposed in `dtype` when first used (a graph that runs
    "gate_up" never writes "gate" and "up"); MatMul nodes."""
    def layer(g: GraphWriter, index: int) -> LinearFn:
        p = f"model.layers.{index}."
        arrays = _dense_layer(config, weights, p)
        w: dict[str, str] = {}

        def linear(x: str, key: str) -> str:
            if key not in w:
                w[key] = g.weight(f"{p}{_NAMES[key]}.weight_t", arrays[key].T.astype(dtype))
            return g.op("MatMul", [x, w[key]])
        return linear
    return layer


def _dense_layer(config: ModelConfig, weights: Mapping[str, np.ndarray],
                 p: str) -> dict[str, np.ndarray]:
    """[out, in] weights of one layer, qkv fused (float64 while scaling, as built since v1),
    qkv_grouped (the same rows grouped by kv head) and gate_up (gate rows, then up rows)."""
    a, m = f"{p}self_attn.", f"{p}mlp."
    q = weights[f"{a}q_proj.weight"].astype(np.float64) * query_scale(config)
    qkv = np.concatenate([q, weights[f"{a}k_proj.weight"], weights[f"{a}v_proj.weight"]])
    gate, up = weights[f"{m}gate_proj.weight"], weights[f"{m}up_proj.weight"]
    return {"qkv": qkv, "qkv_grouped": grouped_qkv(config, qkv),
            "o": weights[f"{a}o_proj.weight"], "gate": gate, "up": up,
            "gate_up": np.concatenate([gate, up]), "down": weights[f"{m}down_proj.weight"]}


def grouped_qkv(config: ModelConfig, qkv: np.ndarray) -> np.ndarray:
    """[out, in] fused QKV rows ([Q heads | K heads | V heads]) regrouped by kv head:
    [Q heads of kv head h | K_h | V_h] for each h."""
    d, kvh = config.head_dim, config.num_kv_heads
    group = config.num_heads // kvh
    q, k, v = np.split(qkv, [config.num_heads * d, (config.num_heads + kvh) * d])
    parts = [(q[h * group * d:(h + 1) * group * d], k[h * d:(h + 1) * d], v[h * d:(h + 1) * d])
             for h in range(kvh)]
    return np.concatenate([row for part in parts for row in part])


def q4_layer_blocks(config: ModelConfig, blocks: Mapping[str, Q4Blocks],
                    p: str) -> dict[str, Q4Blocks]:
    """The blocks of one layer's five linears, qkv fused and Q scaled like `_dense_layer`; and
    "gate_up" (gate and up stacked along N, the single-token graph's one MLP input linear)."""
    a, m = f"{p}self_attn.", f"{p}mlp."
    q = blocks[f"{a}q_proj"].scaled(query_scale(config))
    gate, up = blocks[f"{m}gate_proj"], blocks[f"{m}up_proj"]
    return {"qkv": concat_rows([q, blocks[f"{a}k_proj"], blocks[f"{a}v_proj"]]),
            "o": blocks[f"{a}o_proj"], "gate": gate, "up": up,
            "gate_up": concat_rows([gate, up]), "down": blocks[f"{m}down_proj"]}


def q4_linears(config: ModelConfig, blocks: Mapping[str, Q4Blocks],
               precision: str = EXACT, one_row: bool = False) -> LinearsFactory:
    """MatMulNBits nodes; the block sums of an input are computed once (gate and up share).
    `one_row`: every input is [1, K] (the single-token graph; quant.q4_linear)."""
    def layer(g: GraphWriter, index: int) -> LinearFn:
        p = f"model.layers.{index}."
        w = q4_layer_blocks(config, blocks, p)
        sums: dict[str, str] = {}

        def linear(x: str, key: str) -> str:
            b = w[key]
            if b.minimum is not None and x not in sums:
                sums[x] = block_sums(g, x, b.shape[1], one_row)
            return q4_linear(g, f"{p}{_NAMES[key]}", x, b, sums.get(x), precision, one_row)
        return linear
    return layer


def q4_head(blocks: Mapping[str, Q4Blocks], precision: str = EXACT) -> HeadFn | None:
    """The lm_head as a sum of MatMulNBits over its 4-bit parts (a Q8_0 head is two), or None
    (the graph keeps the dense fp32 head). Measured at M=1: the fp32 head (113 MB for SmolLM2)
    was ~5 ms of a ~21 ms single-token step. "fast": a Q8_0 head is one 8-bit MatMulNBits."""
    parts = head_parts(blocks)
    if not parts:
        return None
    q8 = join_q8_0(parts) if precision == FAST else None
    if q8 is not None:
        return lambda g, x: q8_linear(g, f"{HEAD}.q8", x, *q8, precision)

    def head(g: GraphWriter, x: str) -> str:
        sums = block_sums(g, x, parts[0].shape[1]) if any(
            p.minimum is not None for p in parts) else None
        outs = [q4_linear(g, f"{HEAD}.{i}", x, part, sums, precision)
                for i, part in enumerate(parts)]
        return outs[0] if len(outs) == 1 else g.op("Sum", outs)
    return head
