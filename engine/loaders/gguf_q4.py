"""GGUF Q4_1 / Q4_0 layer linears kept as their 4-bit blocks (beside the float32 weights), for
the MatMulNBits single-token graph (engine/graph/quant.py).

A GGUF 4-bit block covers 32 consecutive weights along the input dim K of one output row n
(gguf.quants.Q4_1 / Q4_0):
  Q4_1, 20 bytes: d fp16 | m fp16 | qs[16]   w = d * q + m
  Q4_0, 18 bytes: d fp16 | qs[16]            w = d * (q - 8)
Byte j of qs holds element j in its low nibble and element j + 16 in its high nibble.

The lm_head (output.weight, or token_embd.weight when tied) is kept too when it is Q4 or Q8_0:
  Q8_0, 34 bytes: d fp16 | qs int8[32]       w = d * q
as two exact 4-bit parts of u = q + 128 = 16 * hi + lo:  w = 16d * (hi - 8) + d * lo
(every product and the sum are exact in float32: d has 11 significant bits).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ModelConfig
from engine.loaders.gguf import hf_name, unpermute_qk

logger = logging.getLogger(__name__)

QK = 32  # weights per block
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_FORMATS = {"Q4_1": (20, 0), "Q4_0": (18, 8)}  # GGUF type -> (bytes per block, zero point)
HEAD = "lm_head"  # blocks key prefix of the head's parts: "lm_head.0", "lm_head.1"


@dataclass(frozen=True, slots=True)
class Q4Blocks:
    """One [N, K] weight as 4-bit blocks of 32 along K, b = k // 32:
    w[n, k] = scale[n, b] * (q[n, k] - zero_point) + minimum[n, b]   (no minimum: + 0)."""

    scale: np.ndarray  # float32 [N, K/32] per-block scale (GGUF d)
    minimum: np.ndarray | None  # float32 [N, K/32] per-block offset (GGUF m); None for Q4_0
    q: np.ndarray  # uint8 [N, K] one 4-bit code (0..15) per byte
    zero_point: int  # 0 (Q4_1) or 8 (Q4_0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.q.shape[1]

    def dequantize(self) -> np.ndarray:
        """float32 [N, K], the same float32 operations as gguf.quants (bit for bit)."""
        scale = np.repeat(self.scale, QK, axis=1)
        if self.minimum is None:
            return scale * (self.q.astype(np.float32) - np.float32(self.zero_point))
        return scale * self.q.astype(np.float32) + np.repeat(self.minimum, QK, axis=1)

    def unpermute_qk(self, n_head: int) -> Q4Blocks:
        """The blocks of `unpermute_qk(w, n_head)`: whole output rows move, blocks stay intact."""
        minimum = None if self.minimum is None else unpermute_qk(self.minimum, n_head)
        return Q4Blocks(unpermute_qk(self.scale, n_head), minimum, unpermute_qk(self.q, n_head),
                        self.zero_point)

    def scaled(self, factor: float) -> Q4Blocks:
        """The blocks of w * factor (exact when factor is a power of two)."""
        f = np.float32(factor)
        minimum = None if self.minimum is None else self.minimum * f
        return Q4Blocks(self.scale * f, minimum, self.q, self.zero_point)


def concat_rows(parts: Sequence[Q4Blocks]) -> Q4Blocks:
    """Blocks of np.concatenate([p.dequantize() for p in parts]) (stacked along N)."""
    kinds = {(p.zero_point, p.minimum is None) for p in parts}
    if len(kinds) != 1:
        raise ValueError("concat_rows: parts mix Q4_1 and Q4_0 blocks")
    minimum = None if parts[0].minimum is None else np.concatenate([p.minimum for p in parts])
    return Q4Blocks(np.concatenate([p.scale for p in parts]), minimum,
                    np.concatenate([p.q for p in parts]), parts[0].zero_point)


def decode_blocks(raw: np.ndarray, kind: str) -> Q4Blocks:
    """uint8 [N, K/32 * bytes per block] (a GGUF tensor's data) -> Q4Blocks of [N, K]."""
    size, zero_point = _FORMATS[kind]
    rows = raw.shape[0]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, -1, size)  # [N, K/32, size]
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    minimum = None
    if kind == "Q4_1":
        minimum = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., size - QK // 2:]  # [N, K/32, 16]
    q = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)  # [N, K/32, 32]
    return Q4Blocks(scale, minimum, q.reshape(rows, -1), zero_point)


def decode_q8_0(raw: np.ndarray) -> list[Q4Blocks]:
    """uint8 [N, K/32 * 34] (a GGUF Q8_0 tensor's data) -> two parts whose sum is w, [N, K]."""
    rows = raw.shape[0]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, -1, 2 + QK)  # [N, K/32, 34]
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    u = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    u = u.reshape(rows, -1)  # [N, K], 0..255
    return [Q4Blocks(d * np.float32(16), None, u >> np.uint8(4), 8),
            Q4Blocks(d, None, u & np.uint8(0x0F), 0)]


def join_q8_0(parts: Sequence[Q4Blocks]) -> tuple[np.ndarray, np.ndarray] | None:
    """The inverse of `decode_q8_0`: (codes u = q + 128, uint8 [N, K]; d, float32 [N, K/32]),
    or None when `parts` are not its two parts."""
    if len(parts) != 2 or parts[0].zero_point != 8 or parts[1].zero_point != 0 or \
            parts[0].minimum is not None or parts[1].minimum is not None:
        return None
    hi, lo = parts
    return (hi.q << np.uint8(4)) | lo.q, lo.scale


def head_parts(blocks: Mapping[str, Q4Blocks]) -> list[Q4Blocks]:
    """The lm_head's 4-bit parts in `blocks` (their dequantized sum is the head), or []."""
    return [blocks[k] for k in sorted(k for k in blocks if k.startswith(f"{HEAD}."))]


def _head_blocks(reader: Any) -> list[Q4Blocks]:
    """The head's parts when it is stored as Q8_0, Q4_1 or Q4_0; [] otherwise."""
    tensors = {t.name: t for t in reader.tensors}
    tensor = tensors.get("output.weight", tensors.get("token_embd.weight"))
    kind = None if tensor is None else tensor.tensor_type.name
    if kind == "Q8_0":
        return decode_q8_0(tensor.data)
    if kind in _FORMATS:
        return [decode_blocks(tensor.data, kind)]
    return []


def _linear_tensors(reader: Any) -> dict[str, Any]:
    """HF name (without ".weight") -> GGUF tensor, for every layer linear."""
    found = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is not None and name.removesuffix(".weight").endswith(LINEARS):
            found[name.removesuffix(".weight")] = tensor
    return found


def blocks_from_gguf(reader: Any, config: ModelConfig,
                     path: str | Path) -> dict[str, Q4Blocks] | None:
    """HF linear name (e.g. "model.layers.0.mlp.up_proj") -> its blocks, Q/K rows in HF order,
    plus the head's parts (`head_parts`) when it is Q8_0 or Q4; None unless every layer linear
    is stored as Q4_1, or every one as Q4_0."""
    tensors = _linear_tensors(reader)
    kinds = {t.tensor_type.name for t in tensors.values()}
    if len(tensors) != len(LINEARS) * config.num_layers or len(kinds) != 1 or \
            not kinds <= _FORMATS.keys():
        logger.info("%s: layer linears are %s, not all Q4_1 or all Q4_0: no 4-bit graph", path,
                    sorted(kinds))
        return None
    kind = kinds.pop()
    blocks: dict[str, Q4Blocks] = {}
    for name, tensor in tensors.items():
        b = decode_blocks(tensor.data, kind)
        if name.endswith("q_proj"):
            b = b.unpermute_qk(config.num_heads)
        elif name.endswith("k_proj"):
            b = b.unpermute_qk(config.num_kv_heads)
        blocks[name] = b
    blocks |= {f"{HEAD}.{i}": part for i, part in enumerate(_head_blocks(reader))}
    return blocks
