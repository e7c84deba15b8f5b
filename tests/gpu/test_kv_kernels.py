"""The NVRTC KV kernels vs the numpy reference: scatter by slot mapping (random, non-contiguous
blocks, padding slots) and block copies, for fp16, bf16 (as bit patterns) and fp32."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from engine.device.cuda import CudaContext, Stream
from engine.device.kernels import KVKernels
from engine.device.memory import DeviceBuffer
from engine.device_kv_pool import DeviceKVPool, PoolGeometry

from .kv_reference import random_slots, reference_block_copy, reference_scatter

pytestmark = pytest.mark.gpu

HOST_TYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


@pytest.fixture(scope="module")
def kernels(cuda_ctx: CudaContext) -> Iterator[KVKernels]:
    with KVKernels(cuda_ctx) as k:
        yield k


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return rng.standard_normal(shape).astype(HOST_TYPES[dtype])


def _upload(arr: np.ndarray, stream: Stream) -> DeviceBuffer:
    buf = DeviceBuffer(max(arr.nbytes, 8))
    buf.copy_from_host(np.ascontiguousarray(arr), stream)
    return buf


def _read_pool(pool: DeviceKVPool, stream: Stream) -> np.ndarray:
    g = pool.geometry
    out = np.empty(g.shape, dtype=HOST_TYPES[g.dtype])
    pool.buffer.copy_to_host(out, stream)
    stream.synchronize()
    return out


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("num_tokens", [1, 13, 300])
def test_scatter_matches_reference(kernels: KVKernels, stream: Stream, dtype: str,
                                   num_tokens: int) -> None:
    """Every token's K/V of every layer and head lands at its slot; -1 slots write nothing."""
    rng = np.random.default_rng(num_tokens)
    g = PoolGeometry(num_layers=3, num_kv_heads=2, num_blocks=97, block_size=16, head_dim=64,
                     dtype=dtype)
    start = _random(rng, g.shape, dtype)
    new_kv = _random(rng, (3, 2, 2, num_tokens, 64), dtype)
    slots = random_slots(rng, g.num_blocks, g.block_size, num_tokens)
    with DeviceKVPool(g, kernels, stream) as pool, _upload(new_kv, stream) as src, \
            _upload(slots, stream) as dslots:
        pool.buffer.copy_from_host(start, stream)
        pool.scatter(src.ptr, dslots.ptr, num_tokens, stream)
        got = _read_pool(pool, stream)
    np.testing.assert_array_equal(got, reference_scatter(start, new_kv, slots, g.block_size))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_block_copy_matches_reference(kernels: KVKernels, stream: Stream, dtype: str) -> None:
    """Whole blocks (all layers, K and V, all heads) are copied src -> dst; others untouched."""
    rng = np.random.default_rng(1)
    g = PoolGeometry(num_layers=2, num_kv_heads=3, num_blocks=40, block_size=8, head_dim=32,
                     dtype=dtype)
    start = _random(rng, g.shape, dtype)
    blocks = rng.permutation(g.num_blocks)
    pairs = list(zip(blocks[:6].tolist(), blocks[6:12].tolist(), strict=True))
    with DeviceKVPool(g, kernels, stream) as pool, \
            _upload(np.array(pairs, dtype=np.int64), stream) as dpairs:
        pool.buffer.copy_from_host(start, stream)
        pool.copy_blocks(dpairs.ptr, len(pairs), stream)
        got = _read_pool(pool, stream)
    np.testing.assert_array_equal(got, reference_block_copy(start, pairs))


def test_new_pool_is_zeroed(kernels: KVKernels, stream: Stream) -> None:
    """A fresh pool reads back as zeros (no stale device memory reaches attention)."""
    g = PoolGeometry(1, 1, 4, 4, 8, "float16")
    with DeviceKVPool(g, kernels, stream) as pool:
        assert not _read_pool(pool, stream).any()
