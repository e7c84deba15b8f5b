"""The KV pool in device memory (the GPU executors'): one cuda-python allocation, owned, with
close(). Its twin in host memory is engine/host_kv_pool.py.

Layout is the graph's (engine/builder.py KV_LAYOUT): [L, 2 (K, V), KVH, NB, BS, D], bound to the
graph's `kv_cache` input as [L*2*KVH*NB, BS, D] (same memory). The graph's `new_kv` output is
[L, 2, KVH, T, D]; `scatter` writes it into the pool by slot mapping with the NVRTC kernel, and
`copy_blocks` copies whole blocks (every layer, K and V, every head) for copy-on-write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from engine.config import ModelConfig
from engine.device.cuda import Stream
from engine.device.kernels import STORAGE_TYPES, KVKernels
from engine.device.memory import DeviceBuffer
from engine.dtypes import NUMPY_DTYPES

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolGeometry:
    """Shape of the pool and the strides (in elements) the kernels use."""

    num_layers: int
    num_kv_heads: int
    num_blocks: int
    block_size: int
    head_dim: int
    dtype: str  # "float16" | "bfloat16" | "float32"

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_TYPES:
            raise ValueError(f"KV pool dtype {self.dtype!r} unsupported; one of "
                             f"{sorted(STORAGE_TYPES)}")
        for name in ("num_layers", "num_kv_heads", "num_blocks", "block_size", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"KV pool {name} must be positive")

    @property
    def itemsize(self) -> int:
        return STORAGE_TYPES[self.dtype][1]

    @property
    def np_dtype(self) -> np.dtype:
        """numpy's element type of the pool (bfloat16 through ml_dtypes)."""
        return NUMPY_DTYPES[self.dtype]

    @property
    def num_planes(self) -> int:  # (layer, K|V) slabs
        return self.num_layers * 2

    @property
    def shape(self) -> tuple[int, ...]:  # [L, 2, KVH, NB, BS, D]
        return (self.num_layers, 2, self.num_kv_heads, self.num_blocks, self.block_size,
                self.head_dim)

    @property
    def graph_shape(self) -> tuple[int, int, int]:  # the graph's kv_cache input
        return (self.num_planes * self.num_kv_heads * self.num_blocks, self.block_size,
                self.head_dim)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def block_elems(self) -> int:  # one block of one (layer, K|V, head)
        return self.block_size * self.head_dim

    @property
    def head_stride(self) -> int:
        return self.num_blocks * self.block_elems

    @property
    def plane_stride(self) -> int:
        return self.num_kv_heads * self.head_stride

    def scatter_args(self, pool_ptr: int, src_ptr: int, slots_ptr: int,
                     num_tokens: int) -> list[tuple[str, int]]:
        """Kernel arguments of kv_scatter for a `new_kv` of [L, 2, KVH, T, D] at `src_ptr`."""
        d = self.head_dim
        return [("ptr", pool_ptr), ("ptr", src_ptr), ("ptr", slots_ptr),
                ("i32", self.num_planes), ("i32", num_tokens), ("i32", self.num_kv_heads),
                ("i32", d), ("i32", self.block_size),
                ("i64", self.num_kv_heads * num_tokens * d),  # src plane stride
                ("i64", d),  # src token stride
                ("i64", num_tokens * d),  # src head stride
                ("i64", self.plane_stride), ("i64", self.block_elems),  # dst plane, block
                ("i64", d), ("i64", self.head_stride)]  # dst slot, head

    def block_copy_args(self, pool_ptr: int, pairs_ptr: int, num_pairs: int
                        ) -> list[tuple[str, int]]:
        """Kernel arguments of kv_block_copy; a 'plane' here is one (layer, K|V, head)."""
        return [("ptr", pool_ptr), ("ptr", pairs_ptr), ("i32", num_pairs),
                ("i32", self.num_planes * self.num_kv_heads), ("i64", self.block_elems),
                ("i64", self.head_stride), ("i64", self.block_elems)]


def geometry_for(config: ModelConfig, num_blocks: int, block_size: int, dtype: str
                 ) -> PoolGeometry:
    return PoolGeometry(num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
                        num_blocks=num_blocks, block_size=block_size, head_dim=config.head_dim,
                        dtype=dtype)


class DeviceKVPool:
    """The pool's device memory plus the two kernels that write it. Zeroed at creation."""

    def __init__(self, geometry: PoolGeometry, kernels: KVKernels, stream: Stream) -> None:
        self.geometry = geometry
        self._kernels = kernels
        self.buffer = DeviceBuffer(geometry.nbytes)
        self.buffer.memset(0, stream)
        logger.info("KV pool on device: %d blocks x %d tokens, %s, %.1f MiB", geometry.num_blocks,
                    geometry.block_size, geometry.dtype, geometry.nbytes / 2**20)

    @property
    def ptr(self) -> int:
        return self.buffer.ptr

    def scatter(self, new_kv_ptr: int, slots_ptr: int, num_tokens: int, stream: Stream) -> None:
        """new_kv [L, 2, KVH, T, D] at `new_kv_ptr` -> pool, by int64 slot mapping [T]."""
        g = self.geometry
        scatter, _ = self._kernels.functions(g.dtype)
        total = g.num_planes * num_tokens * g.num_kv_heads * g.head_dim
        self._kernels.launch(scatter, total, g.scatter_args(self.ptr, new_kv_ptr, slots_ptr,
                                                            num_tokens), stream)

    def copy_blocks(self, pairs_ptr: int, num_pairs: int, stream: Stream) -> None:
        """Whole-block copies by int64 [(src, dst), ...] at `pairs_ptr`; dsts must be distinct
        and not also sources (copy-on-write targets are fresh blocks)."""
        g = self.geometry
        _, block_copy = self._kernels.functions(g.dtype)
        total = num_pairs * g.num_planes * g.num_kv_heads * g.block_elems
        self._kernels.launch(block_copy, total, g.block_copy_args(self.ptr, pairs_ptr,
                                                                  num_pairs), stream)

    def close(self) -> None:
        self.buffer.close()

    def __enter__(self) -> DeviceKVPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
