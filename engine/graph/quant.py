"""The 4-bit linear: onnxruntime's com.microsoft MatMulNBits straight from GGUF Q4 blocks, with
no new quantization error.

A block of 32 weights along K is w = s * (q - zp) + m (engine/loaders/gguf_q4.py). MatMulNBits
(bits=4, block_size=32) computes x @ [s * (q - zp)]^T from packed codes, so

    x @ w^T = MatMulNBits(x; q, s, zp) + blocksum(x) @ m^T,   blocksum(x)[t, b] = sum of the
                                                              32 inputs x[t, 32b : 32b + 32]

(for Q4_0, m = 0 and zp = 8: no second term). Choices measured on a 2-core CPU (onnxruntime
1.32, the 150 SmolLM2 layer linears at M=1): uint8 zero points and accuracy_level=1 (float32
activations) are the fast path, 12.5 ms against 19.6 ms dense fp32; float zero points and
bits=8 fall on a ~10x slower path at accuracy_level=1.
At M=2 MatMulNBits is already slower than dense (32.8 ms against 21.0 ms), so the graph built
from these is run for single-token steps only. A Q8_0 head runs as two 4-bit parts (its codes'
high and low nibbles, engine/loaders/gguf_q4.py): SmolLM2 single-token steps went from 108% to
117% of the dense fp32 matmul roofline's speed (in-process A/B, 12 rounds).

Precision (engine/dtypes.py CPU_PRECISIONS, chosen per server): "exact" is accuracy_level=1
(float32 activations, the GGUF's weights exactly); "fast" is accuracy_level=4: MLAS quantizes
each block of 32 activations to int8 with its own scale and runs integer dot products (VNNI),
the arithmetic llama.cpp's own Q4_1 x Q8_1 / Q8_0 x Q8_0 dot products use. In "fast" a Q8_0
head runs as one 8-bit MatMulNBits (`q8_linear`) instead of two exact 4-bit parts (M=1,
576 x 49152, 2 cores: ~4.1 ms against 7.4 ms for the two parts at level 4, 9.6 ms at level 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.dtypes import EXACT, FAST
from engine.graph.writer import GraphWriter
from engine.loaders.gguf_q4 import QK, Q4Blocks

MS_DOMAIN = "com.microsoft"
ACCURACY_LEVELS = {EXACT: 1, FAST: 4}  # MatMulNBits: 1 float32 activations, 4 int8 (per block)
Q8_ZERO_POINT = 128  # Q8_0 codes q (int8) stored as q + 128 (uint8)


@dataclass(frozen=True, slots=True)
class NBitsWeights:
    """MatMulNBits's constant inputs for one [N, K] weight (bits=4, block_size=32)."""

    packed: np.ndarray  # uint8 [N, K/32, 16]: byte i of a block = element 2i | element 2i+1 << 4
    scales: np.ndarray  # float32 [N * K/32]
    zero_points: np.ndarray  # uint8 [N * ceil(K/32 / 2)]: block 2j low nibble, 2j+1 high nibble


def pack_nbits(blocks: Q4Blocks) -> NBitsWeights:
    n, k = blocks.shape
    q = blocks.q.reshape(n, k // QK, QK)  # [N, K/32, 32]
    packed = q[..., 0::2] | (q[..., 1::2] << np.uint8(4))  # [N, K/32, 16]
    zp_bytes = -(-(k // QK) // 2)
    zp = np.full(n * zp_bytes, blocks.zero_point * 0x11, dtype=np.uint8)
    return NBitsWeights(np.ascontiguousarray(packed), blocks.scale.reshape(-1).copy(), zp)


def block_sums(g: GraphWriter, x: str, k: int, one_row: bool = False) -> str:
    """x [T, K] -> [T, K/32], the sum of each block of 32 inputs; `one_row` (x is [1, K]):
    -> [K/32], so that the minimum's correction is 1-D, the shape of MatMulNBits's bias."""
    blocks = g.op("Reshape", [x, g.i64([k // QK, QK] if one_row else [-1, k // QK, QK])])
    return g.op("ReduceSum", [blocks, g.i64([-1])], keepdims=0)  # [T, K/32] or [K/32]


def q4_linear(g: GraphWriter, name: str, x: str, blocks: Q4Blocks, sums: str | None,
              precision: str = EXACT, one_row: bool = False) -> str:
    """x [T, K] @ w^T -> [T, N] for w given as blocks; `sums` = block_sums(x, one_row) (needed
    when the blocks have a minimum, shareable by linears reading the same x). `one_row` (x is
    [1, K], sums [K/32]): the minimum's correction [N] goes in as MatMulNBits's bias, one node
    fewer than the Add (the single-token graph: 120 nodes fewer for SmolLM2)."""
    n, k = blocks.shape
    nbits = pack_nbits(blocks)
    inputs = [x, g.weight(f"{name}.q4", nbits.packed), g.weight(f"{name}.q4_scales", nbits.scales),
              g.weight(f"{name}.q4_zero_points", nbits.zero_points)]
    correction = None
    if blocks.minimum is not None:
        if sums is None:
            raise ValueError(f"{name}: blocks with a minimum need the input's block sums")
        mins = g.weight(f"{name}.q4_mins_t", np.ascontiguousarray(blocks.minimum.T))  # [K/32, N]
        correction = g.op("MatMul", [sums, mins])  # [T, N] or, one_row, [N]
    if correction is not None and one_row:
        inputs += ["", correction]  # g_idx absent, bias
    y = g.op("MatMulNBits", inputs, domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=QK,
             accuracy_level=ACCURACY_LEVELS[precision])  # [T, N]
    return y if correction is None or one_row else g.op("Add", [y, correction])


def q8_linear(g: GraphWriter, name: str, x: str, codes: np.ndarray, scale: np.ndarray,
              precision: str) -> str:
    """x [T, K] @ w^T -> [T, N] for a Q8_0 weight w[n, k] = scale[n, k // 32] * (codes[n, k] - 128)
    (codes uint8 [N, K], scale float32 [N, K/32]): one 8-bit MatMulNBits."""
    n, k = codes.shape
    packed = np.ascontiguousarray(codes.reshape(n, k // QK, QK))
    zero_points = np.full(n * (k // QK), Q8_ZERO_POINT, dtype=np.uint8)
    inputs = [x, g.weight(f"{name}.q8", packed),
              g.weight(f"{name}.q8_scales", np.ascontiguousarray(scale.reshape(-1))),
              g.weight(f"{name}.q8_zero_points", zero_points)]
    return g.op("MatMulNBits", inputs, domain=MS_DOMAIN, K=k, N=n, bits=8, block_size=QK,
                accuracy_level=ACCURACY_LEVELS[precision])  # [T, N]
