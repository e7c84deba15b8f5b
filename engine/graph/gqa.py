"""The decode graph's attention: com.microsoft GroupQueryAttention over the past gathered
batch-major (`model_decode.onnx`, engine/builder.py; the ONNX Runtime CUDA executor runs its
decode buckets through it).

The general graph's opset-23 `Attention` path (engine/graph/attention.py) gathers each
sequence's past blocks KV-head-major, transposes them to [B, KVH, S, D], concatenates this
step's K/V, builds a boolean mask and runs ONNX Runtime's unfused attention over every padded
slot: several full copies of the padded past per layer. Here the pool is gathered straight
into [B, KVH, S, D] (the block-table index is laid out batch-major: no Transpose) and
GroupQueryAttention (flash attention on the CUDA EP in fp16 / bf16) appends each row's new K/V
after its own past length (`seqlens_k` = past_len, the new token's position) and attends over
that length only.

Decode steps only: every row has one new token, so T = B, Tq = 1 and the pad/unpad indices are
identities (engine/step_inputs.py `pack_decode`); ONNX Runtime refuses GroupQueryAttention
over several new tokens per row with a past in a batch of more than one ("batch_size must be 1
when sequence_length > 1 and past context is given"), so prefill and mixed steps stay on the
general graph. Pad rows of a bucket (past_len 0) attend to their one slot. The 1/sqrt(D) scale
is folded into the query weights (scale = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from engine.config import ModelConfig
from engine.graph.attention import StepTensors
from engine.graph.quant import MS_DOMAIN
from engine.graph.writer import GraphWriter

DECODE_MODEL_FILE = "model_decode.onnx"
DECODE_DATA_FILE = "model_decode.onnx.data"


@dataclass(frozen=True, slots=True)
class GqaStep:
    """Values of one decode step shared by every layer's GroupQueryAttention."""

    st: StepTensors
    pool_index: list[str]  # 2L tensors int64 [B, KVH, MB]: rows of kv_cache, (layer, K|V) order
    past_shape: str  # int64 [4] = [B, KVH, S, D]
    seqlens_k: str  # int32 [B]: the new token's position in each row (= past_len)
    total_len: str  # int32 scalar: S + 1 (the op's present length)


def gqa_step(g: GraphWriter, config: ModelConfig, st: StepTensors, block_size: int) -> GqaStep:
    """Batch-major pool rows ((layer * 2 + kv) * KVH + head) * NB + block, and the op's
    length inputs, once per step."""
    kvh, layers = config.num_kv_heads, config.num_layers
    inp = st.inputs
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
    past_shape = g.op("Concat", [b1, g.i64([kvh, -1, config.head_dim])], axis=0)
    total = g.op("Add", [g.op("Mul", [mb, g.i64(block_size)]), g.i64(1)])  # scalar S + 1
    return GqaStep(st=st, pool_index=pool_index, past_shape=past_shape,
                   seqlens_k=g.op("Cast", [inp.past_lens], to=TensorProto.INT32),
                   total_len=g.op("Cast", [total], to=TensorProto.INT32))


def gqa_attention(g: GraphWriter, step: GqaStep, config: ModelConfig, layer: int,
                  qkv: tuple[str, str, str]) -> str:
    """q [T, H, D]; k, v [T, KVH, D] (roped; T = B, one token per row) -> [T, H * D]."""
    h, kvh, d = config.num_heads, config.num_kv_heads, config.head_dim
    new = [g.op("Reshape", [x, g.i64([-1, 1, heads * d])])  # [B, 1, heads*D]
           for x, heads in zip(qkv, (h, kvh, kvh), strict=True)]
    past = []
    for kv in (0, 1):
        blocks = g.op("Gather", [step.st.inputs.kv_cache, step.pool_index[2 * layer + kv]],
                      axis=0)  # [B, KVH, MB, BS, D]
        past.append(g.op("Reshape", [blocks, step.past_shape]))  # [B, KVH, S, D]
    out, _, _ = g.op_n("GroupQueryAttention", [*new, *past, step.seqlens_k, step.total_len],
                       outputs=3, domain=MS_DOMAIN, num_heads=h, kv_num_heads=kvh, scale=1.0)
    return g.op("Reshape", [out, g.i64([-1, h * d])])  # [T, H*D]
