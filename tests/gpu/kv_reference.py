"""numpy references for the KV kernels: the plain-layout truth, and an emulation of the kernels'
index arithmetic driven by the exact argument lists DeviceKVPool passes (so stride mistakes show
up on CPU, before any GPU run)."""

from __future__ import annotations

import numpy as np


def reference_scatter(pool: np.ndarray, new_kv: np.ndarray, slots: np.ndarray,
                      block_size: int) -> np.ndarray:
    """pool [L, 2, KVH, NB, BS, D] with new_kv [L, 2, KVH, T, D] written at slots [T]."""
    out = pool.copy()
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            out[:, :, :, slot // block_size, slot % block_size, :] = new_kv[:, :, :, t, :]
    return out


def reference_block_copy(pool: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    out = pool.copy()
    for src, dst in pairs:
        out[:, :, :, dst] = pool[:, :, :, src]
    return out


def emulate_scatter(pool_flat: np.ndarray, src_flat: np.ndarray, slots: np.ndarray,
                    args: list[tuple[str, int]]) -> np.ndarray:
    """What kv_scatter computes, element by element index math, vectorized."""
    v = [value for _, value in args[3:]]
    planes, tokens, heads, dim, bs = v[:5]
    sps, sts, shs, dps, dbs, dss, dhs = v[5:]
    p, t, h, d = np.meshgrid(np.arange(planes), np.arange(tokens), np.arange(heads),
                             np.arange(dim), indexing="ij")
    slot = slots[t]
    keep = slot >= 0
    dst = p * dps + (slot // bs) * dbs + (slot % bs) * dss + h * dhs + d
    src = p * sps + t * sts + h * shs + d
    out = pool_flat.copy()
    out[dst[keep]] = src_flat[src[keep]]
    return out


def emulate_block_copy(pool_flat: np.ndarray, pairs: np.ndarray,
                       args: list[tuple[str, int]]) -> np.ndarray:
    """What kv_block_copy computes."""
    num_pairs, planes, block_elems, plane_stride, block_stride = [v for _, v in args[2:]]
    out = pool_flat.copy()
    for i in range(num_pairs):
        src, dst = int(pairs[i, 0]), int(pairs[i, 1])
        for p in range(planes):
            s = p * plane_stride + src * block_stride
            d = p * plane_stride + dst * block_stride
            out[d:d + block_elems] = pool_flat[s:s + block_elems]
    return out


def random_slots(rng: np.random.Generator, num_blocks: int, block_size: int,
                 num_tokens: int) -> np.ndarray:
    """Distinct slots over shuffled, non-contiguous blocks, with a padding (-1) entry."""
    blocks = rng.permutation(num_blocks)[: -(-num_tokens // block_size) + 1]
    slots = (blocks[:, None] * block_size + np.arange(block_size)).reshape(-1)
    slots = rng.permutation(slots)[:num_tokens].astype(np.int64)
    if num_tokens > 2:
        slots[num_tokens // 2] = -1
    return slots
