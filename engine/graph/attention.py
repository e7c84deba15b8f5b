"""Paged, padded attention of one step: gather each sequence's past KV blocks from the pool by
block table, place this step's new K/V after them, and run masked (causal, GQA) attention.

Sizes of one step (all dynamic): T packed new tokens, B sequences, Tq = the most new tokens of
any sequence (queries are padded to [B, Tq]), MB = the most past blocks of any sequence,
S = MB * block_size gathered past slots. Nothing is ever sized by the model's maximum context.

Two implementations of the same math:
- "decomposed" (opset 18, the fp32/CPU path): heads stay KV-head-major ([KVH, B, ...]) so the
  pool gather needs no transpose of the big past tensor; the past and new parts are scored
  separately and share one softmax, so past K/V is never concatenated (copied) again.
  (Tried and measured: writing the new K/V into the gathered copy with ScatterND saves ~8 nodes
  per layer, but onnxruntime's CPU ScatterND is not in place: it copied the whole gathered K
  and V again, 93 us per call at batch 16 / context 80, growing with context.)
- "onnx_attention" (opset 23 `Attention`, the fp16 / TensorRT path): BHND Q/K/V with past and new
  K/V concatenated and a boolean mask; TensorRT builds this into IAttention.
The 1/sqrt(head_dim) scale is folded into the query weights by the builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from engine.config import ModelConfig
from engine.graph.writer import GraphWriter

DECOMPOSED = "decomposed"
ONNX_ATTENTION = "onnx_attention"
ATTENTION_IMPLS = (DECOMPOSED, ONNX_ATTENTION)


@dataclass(frozen=True, slots=True)
class StepInputs:
    """Names of the graph inputs that describe the step's layout."""

    kv_cache: str  # [L*2*KVH*NB, BS, D] the pool (read-only)
    block_tables: str  # int64 [B, MB]
    past_lens: str  # int64 [B]
    pad_index: str  # int64 [B, Tq] packed row of each padded query slot
    unpad_index: str  # int64 [T] padded slot (b * Tq + t) of each packed token


@dataclass(frozen=True, slots=True)
class StepTensors:
    """Values computed once per step and shared by every layer."""

    inputs: StepInputs
    pool_index: list[str]  # 2L tensors int64 [KVH, B, MB]: rows of kv_cache, (layer, K|V) order
    valid: str  # bool [B, Tq, S + Tq]: query t of seq b may attend key slot j
    bias: str  # additive mask [1, B, Tq, 1, S + Tq] (decomposed path)
    split_sizes: str  # int64 [2] = [S, Tq]
    shape_scores5: str  # int64 [5] = [KVH, B, Tq, G, S + Tq]
    shape_scores4: str  # int64 [4] = [KVH, B, Tq * G, S + Tq]


def step_tensors(g: GraphWriter, config: ModelConfig, inp: StepInputs, block_size: int,
                 dtype: np.dtype) -> StepTensors:
    kvh, layers = config.num_kv_heads, config.num_layers
    zero = g.i64(0)
    batch = g.op("Gather", [g.op("Shape", [inp.pad_index]), zero])  # scalar B
    tq = g.op("Gather", [g.op("Shape", [inp.pad_index]), g.i64(1)])  # scalar Tq
    mb = g.op("Gather", [g.op("Shape", [inp.block_tables]), g.i64(1)])  # scalar MB
    past = g.op("Mul", [mb, g.i64(block_size)])  # scalar S
    total = g.op("Add", [past, tq])  # scalar S + Tq
    one_d = [g.op("Unsqueeze", [v, g.i64([0])]) for v in (batch, tq, past, total)]
    b1, tq1, s1, st1 = one_d
    # pool rows: ((layer * 2 + kv) * KVH + head) * NB + block
    nb = g.op("Div", [g.op("Gather", [g.op("Shape", [inp.kv_cache]), zero]),
                      g.i64(2 * layers * kvh)])
    base = np.arange(2 * layers * kvh, dtype=np.int64).reshape(-1, 1, 1)  # [2L*KVH, 1, 1]
    offsets = g.op("Mul", [g.const(base, np.int64, "pool_base"), nb])
    rows = g.op("Add", [g.op("Unsqueeze", [inp.block_tables, g.i64([0])]), offsets])
    pool_index = g.op_n("Split", [rows, g.i64([kvh] * (2 * layers))], outputs=2 * layers,
                        axis=0, name_hint="pool_index")  # each [KVH, B, MB]
    # validity: past slot j < past_len[b]; new slot u <= t (causal within the step)
    j = g.op("Unsqueeze", [g.op("Range", [zero, past, g.i64(1)]), g.i64([0, 1])])  # [1,1,S]
    lens = g.op("Unsqueeze", [inp.past_lens, g.i64([1, 2])])  # [B, 1, 1]
    shape_bts = g.op("Concat", [b1, tq1, s1], axis=0)
    past_ok = g.op("Expand", [g.op("Less", [j, lens]), shape_bts])  # [B, Tq, S]
    t = g.op("Range", [zero, tq, g.i64(1)])  # [Tq]
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [t, g.i64([0])]),
                                  g.op("Unsqueeze", [t, g.i64([1])])])  # [Tq(t), Tq(u)]
    new_ok = g.op("Expand", [causal, g.op("Concat", [b1, tq1, tq1], axis=0)])  # [B, Tq, Tq]
    valid = g.op("Concat", [past_ok, new_ok], axis=-1)  # [B, Tq, S + Tq]
    neg = float(ml_dtypes.finfo(dtype).min) if dtype != np.float32 else -1e30
    bias = g.op("Where", [valid, g.const(0.0, dtype), g.const(neg, dtype)])
    bias = g.op("Unsqueeze", [bias, g.i64([0, 3])])  # [1, B, Tq, 1, S + Tq]
    kvh1, grp1 = g.i64([kvh]), g.i64([config.group_size])
    tqg = g.op("Mul", [tq1, grp1])
    return StepTensors(
        inputs=inp, pool_index=pool_index, valid=valid, bias=bias,
        split_sizes=g.op("Concat", [s1, tq1], axis=0),
        shape_scores5=g.op("Concat", [kvh1, b1, tq1, grp1, st1], axis=0),
        shape_scores4=g.op("Concat", [kvh1, b1, tqg, st1], axis=0))


def gather_past(g: GraphWriter, st: StepTensors, layer: int, kv: int, head_dim: int,
                num_kv_heads: int) -> str:
    """Past K (kv=0) or V (kv=1) of one layer: [KVH, B, S, D]."""
    rows = st.pool_index[2 * layer + kv]
    blocks = g.op("Gather", [st.inputs.kv_cache, rows], axis=0)  # [KVH, B, MB, BS, D]
    return g.op("Reshape", [blocks, g.i64([num_kv_heads, 0, -1, head_dim])])  # [KVH, B, S, D]


def attention(g: GraphWriter, st: StepTensors, config: ModelConfig, layer: int, q: str,
              k_heads: str, v_heads: str, impl: str) -> str:
    """q [T, H, D]; k_heads, v_heads [KVH, T, D] (already roped) -> [T, H * D]."""
    if impl == DECOMPOSED:
        return _decomposed(g, st, config, layer, q, k_heads, v_heads)
    if impl == ONNX_ATTENTION:
        return _onnx_attention(g, st, config, layer, q, k_heads, v_heads)
    raise ValueError(f"unknown attention implementation {impl!r}; one of {ATTENTION_IMPLS}")


def _decomposed(g: GraphWriter, st: StepTensors, config: ModelConfig, layer: int, q: str,
                k_heads: str, v_heads: str) -> str:
    kvh, grp, d = config.num_kv_heads, config.group_size, config.head_dim
    pad = st.inputs.pad_index
    qg = g.op("Reshape", [q, g.i64([0, kvh, grp, d])])  # [T, KVH, G, D]
    qg = g.op("Transpose", [qg], perm=[1, 0, 2, 3])  # [KVH, T, G, D]
    qp = g.op("Gather", [qg, pad], axis=1)  # [KVH, B, Tq, G, D]
    qp = g.op("Reshape", [qp, g.i64([kvh, 0, -1, d])])  # [KVH, B, Tq*G, D]
    k_new = g.op("Gather", [k_heads, pad], axis=1)  # [KVH, B, Tq, D]
    v_new = g.op("Gather", [v_heads, pad], axis=1)  # [KVH, B, Tq, D]
    k_past = gather_past(g, st, layer, 0, d, kvh)  # [KVH, B, S, D]
    v_past = gather_past(g, st, layer, 1, d, kvh)
    s_past = g.op("MatMul", [qp, g.op("Transpose", [k_past], perm=[0, 1, 3, 2])])  # [..,TqG,S]
    s_new = g.op("MatMul", [qp, g.op("Transpose", [k_new], perm=[0, 1, 3, 2])])  # [..,TqG,Tq]
    scores = g.op("Concat", [s_past, s_new], axis=-1)  # [KVH, B, Tq*G, S+Tq]
    scores = g.op("Reshape", [scores, st.shape_scores5])  # [KVH, B, Tq, G, S+Tq]
    probs = g.op("Softmax", [g.op("Add", [scores, st.bias])], axis=-1)
    probs = g.op("Reshape", [probs, st.shape_scores4])  # [KVH, B, Tq*G, S+Tq]
    p_past, p_new = g.op_n("Split", [probs, st.split_sizes], outputs=2, axis=-1)
    out = g.op("Add", [g.op("MatMul", [p_past, v_past]), g.op("MatMul", [p_new, v_new])])
    out = g.op("Reshape", [out, g.i64([kvh, -1, grp, d])])  # [KVH, B*Tq, G, D]
    out = g.op("Gather", [out, st.inputs.unpad_index], axis=1)  # [KVH, T, G, D]
    out = g.op("Transpose", [out], perm=[1, 0, 2, 3])  # [T, KVH, G, D]
    return g.op("Reshape", [out, g.i64([0, -1])])  # [T, H*D]


def _onnx_attention(g: GraphWriter, st: StepTensors, config: ModelConfig, layer: int, q: str,
                    k_heads: str, v_heads: str) -> str:
    d, kvh = config.head_dim, config.num_kv_heads
    pad = st.inputs.pad_index
    qp = g.op("Gather", [q, pad], axis=0)  # [B, Tq, H, D]
    qp = g.op("Transpose", [qp], perm=[0, 2, 1, 3])  # [B, H, Tq, D]
    keys = []
    for kv, heads in ((0, k_heads), (1, v_heads)):
        past = g.op("Transpose", [gather_past(g, st, layer, kv, d, kvh)], perm=[1, 0, 2, 3])
        new = g.op("Transpose", [g.op("Gather", [heads, pad], axis=1)], perm=[1, 0, 2, 3])
        keys.append(g.op("Concat", [past, new], axis=2))  # [B, KVH, S+Tq, D]
    mask = g.op("Unsqueeze", [st.valid, g.i64([1])])  # [B, 1, Tq, S+Tq] bool
    out = g.op("Attention", [qp, keys[0], keys[1], mask], scale=1.0)  # [B, H, Tq, D]
    out = g.op("Transpose", [out], perm=[0, 2, 1, 3])  # [B, Tq, H, D]
    out = g.op("Reshape", [out, g.i64([-1, config.num_heads * d])])  # [B*Tq, H*D]
    return g.op("Gather", [out, st.inputs.unpad_index], axis=0)  # [T, H*D]
