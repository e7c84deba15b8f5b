"""The KV pool in host memory (the CPU executor's): one numpy array [L, 2 (K, V), KVH, NB, BS,
D] that the graph reads through its `kv_cache` input (viewed as [L*2*KVH*NB, BS, D], same
memory) and that only this class writes: new K/V by slot mapping after a step, whole-block
copies before one. Its twin in device memory is engine/device_kv_pool.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from engine.config import ModelConfig

logger = logging.getLogger(__name__)


class HostKVPool:
    """Owns the pool array (the KV tensors; which block belongs to whom is the scheduler's
    BlockAllocator's business). Block ids are 0..num_blocks-1; slot = block * BS + offset."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: np.dtype | str = np.float32) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"KV pool needs positive sizes, got {num_blocks=} {block_size=}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (config.num_layers, 2, config.num_kv_heads, num_blocks, block_size,
                 config.head_dim)
        self.data = np.zeros(shape, dtype=dtype)  # [L, 2, KVH, NB, BS, D]
        logger.info("KV pool in host memory: %d blocks x %d tokens, %.1f MiB", num_blocks,
                    block_size, self.data.nbytes / 2**20)

    @property
    def graph_view(self) -> np.ndarray:
        """The same memory as the graph's `kv_cache` input: [L*2*KVH*NB, BS, D]."""
        return self.data.reshape(-1, self.block_size, self.data.shape[-1])

    def write(self, blocks: np.ndarray, offsets: np.ndarray, new_kv: np.ndarray) -> None:
        """new_kv [L, 2, KVH, T, D] goes to (blocks[t], offsets[t]) for each token t."""
        slots = self.data.reshape(*self.data.shape[:3], -1, self.data.shape[-1])  # a view
        slots[:, :, :, blocks * self.block_size + offsets] = new_kv

    def write_token(self, block: int, offset: int, kv: np.ndarray) -> None:
        """One token's K/V [L, 2, KVH, 1, D] to slot (block, offset): a strided copy, no fancy
        indexing (the single-token decode step)."""
        self.data[:, :, :, block, offset] = kv[:, :, :, 0]

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copies whole blocks src -> dst (all layers, K and V), in order."""
        for src, dst in pairs:
            self.data[:, :, :, dst] = self.data[:, :, :, src]

    def read(self, blocks: Sequence[int], length: int) -> np.ndarray:
        """The first `length` tokens stored along a block table: [L, 2, KVH, length, D]."""
        kv = self.data[:, :, :, list(blocks)]  # [L, 2, KVH, nb, BS, D]
        kv = kv.reshape(*kv.shape[:3], -1, kv.shape[-1])
        return kv[:, :, :, :length]
