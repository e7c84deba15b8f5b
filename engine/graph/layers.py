"""Per-token building blocks of the Llama graph: RMSNorm, RoPE, SwiGLU MLP, and the RoPE
frequencies (incl. Llama-3 scaling) baked at build time.

All activations here are packed tokens: [T, ...]. Shapes are noted at every reshape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from onnx import helper

from engine.config import ModelConfig
from engine.graph.writer import GraphWriter


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """float32 [head_dim / 2] inverse frequencies, with Llama-3 scaling when configured."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv.astype(np.float32)
    old_ctx = scaling.original_max_position_embeddings
    low_wavelen = old_ctx / scaling.low_freq_factor
    high_wavelen = old_ctx / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old_ctx / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(config: ModelConfig, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos and sin [positions, head_dim / 2] of every position below `positions`: the
    angle rounded to float32 as the graphs compute it (float32 position x float32 inverse
    frequency), its cos and sin then rounded once from float64."""
    angle = np.arange(positions, dtype=np.float32)[:, None] * rope_inv_freq(config)[None, :]
    angle = angle.astype(np.float64)
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rope_tables(g: GraphWriter, config: ModelConfig, positions: str, dtype: np.dtype
                ) -> tuple[str, str]:
    """cos and signed sin, each [T, 1, head_dim], computed once per step in float32.

    rotate_half(x) * sin == swap_halves(x) * cat(-sin, sin), so the sign is folded in here.
    """
    half = config.head_dim // 2
    inv_full = np.concatenate([rope_inv_freq(config)] * 2).reshape(1, 1, -1)  # [1, 1, D]
    sign = np.concatenate([-np.ones(half), np.ones(half)]).astype(np.float32).reshape(1, 1, -1)
    pos = g.op("Cast", [positions], to=1)  # [T] float32
    pos = g.op("Unsqueeze", [pos, g.i64([1, 2])])  # [T, 1, 1]
    freqs = g.op("Mul", [pos, g.const(inv_full, np.float32, "inv_freq")])  # [T, 1, D]
    cos = g.op("Cos", [freqs], name_hint="rope_cos")
    sin = g.op("Mul", [g.op("Sin", [freqs]), g.const(sign, np.float32, "rope_sign")],
               name_hint="rope_sin")
    if dtype != np.float32:
        to = onnx_type(dtype)
        cos, sin = g.op("Cast", [cos], to=to), g.op("Cast", [sin], to=to)
    return cos, sin


def rope_half_tables(g: GraphWriter, config: ModelConfig, positions: str, dtype: np.dtype
                     ) -> tuple[str, str]:
    """cos and sin [1, T, head_dim / 2] for the opset-23 RotaryEmbedding op (one per step)."""
    inv = rope_inv_freq(config).reshape(1, 1, -1)  # [1, 1, D/2]
    pos = g.op("Unsqueeze", [g.op("Cast", [positions], to=1), g.i64([0, 2])])  # [1, T, 1]
    freqs = g.op("Mul", [pos, g.const(inv, np.float32, "inv_freq_half")])  # [1, T, D/2]
    cos, sin = g.op("Cos", [freqs]), g.op("Sin", [freqs])
    if dtype != np.float32:
        to = onnx_type(dtype)
        cos, sin = g.op("Cast", [cos], to=to), g.op("Cast", [sin], to=to)
    return cos, sin


def apply_rope_op(g: GraphWriter, x: str, cos: str, sin: str, heads: int, head_dim: int) -> str:
    """x: [T, heads, D] through opset-23 RotaryEmbedding (rotate_half form): 3 nodes, not 6."""
    x3 = g.op("Reshape", [x, g.i64([1, -1, heads * head_dim])])  # [1, T, heads*D]
    y = g.op("RotaryEmbedding", [x3, cos, sin], num_heads=heads, interleaved=0)
    return g.op("Reshape", [y, g.i64([-1, heads, head_dim])])  # [T, heads, D]


def apply_rope(g: GraphWriter, x: str, cos: str, sin: str, head_dim: int) -> str:
    """x: [T, heads, D] -> x * cos + swap_halves(x) * signed_sin."""
    halves = g.op("Reshape", [x, g.i64([0, 0, 2, head_dim // 2])])  # [T, heads, 2, D/2]
    swapped = g.op("Slice", [halves, g.i64([-1]), g.i64([-(2**62)]), g.i64([2]), g.i64([-1])])
    swapped = g.op("Reshape", [swapped, g.i64([0, 0, head_dim])])  # [T, heads, D]
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [swapped, sin])])


def rms_norm(g: GraphWriter, x: str, weight: str, eps: float, dtype: np.dtype) -> str:
    """HF LlamaRMSNorm over the last axis; computed in float32 for half-precision graphs.

    Written as Pow/ReduceMean/Add/Sqrt/Div/Mul, the pattern onnxruntime fuses into
    SimplifiedLayerNormalization and TensorRT recognises.
    """
    low = dtype != np.float32
    h = g.op("Cast", [x], to=1) if low else x
    var = g.op("ReduceMean", [g.op("Pow", [h, g.const(2.0, np.float32)]), g.i64([-1])],
               keepdims=1)
    denom = g.op("Sqrt", [g.op("Add", [var, g.const(eps, np.float32)])])
    normed = g.op("Div", [h, denom])
    if low:
        normed = g.op("Cast", [normed], to=onnx_type(dtype))
    return g.op("Mul", [normed, weight])


def swiglu_mlp(g: GraphWriter, x: str, linear: Callable[[str, str], str]) -> str:
    """down(silu(gate(x)) * up(x)), `linear(input, "gate" | "up" | "down")` writing each
    projection. Two projections rather than one fused [hidden, 2F] MatMul and a Split: the
    Split's copy cost more than the extra node (measured, batch-16 decode)."""
    gate = linear(x, "gate")  # [T, F]
    up = linear(x, "up")  # [T, F]
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    return linear(act, "down")  # [T, hidden]


def onnx_type(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
