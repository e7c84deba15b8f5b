"""One sequence's past K/V laid out for the single-token graph (engine/graph/single_token.py):
per layer and K|V a contiguous [1, KVH, capacity, D] buffer that the graph reads as its past and
writes as its present (GroupQueryAttention appends the token's K/V at its position), so that a
single-sequence decode step gathers nothing from the paged pool and copies no past.

The mirror holds the past of at most one sequence. It is (re)built from the pool when a step
asks for a sequence, past length or block table other than the one it holds (a copy of the
whole past, once per switch), grows by the position each step writes, and is dropped whenever
another graph call writes that sequence's K/V or a block copy lands in its blocks: the pool stays
the one source of truth (the executor writes every step's K/V there too).

The buffer is sized for the capacity (the longest context the executor runs) but mapped
anonymously (zero pages, resident only when written) with transparent huge pages turned off for
it: each (layer, K|V, head) row of positions is its own region, and a huge page would make 2 MiB
of each resident at its first position. With 4 KiB pages the resident size follows the positions
written: for SmolLM2 (180 regions of 256 B a position) ~46 KiB a position, plus at most one
partly used page per region.
"""

from __future__ import annotations

import logging
import mmap

import numpy as np

from engine.config import ModelConfig
from engine.host_kv_pool import HostKVPool
from scheduler.plan import ScheduledSeq

logger = logging.getLogger(__name__)


def zeroed_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zero-filled array on its own anonymous mapping, pages resident only once written, no
    transparent huge pages where the platform lets us say so."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes)
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError as exc:  # e.g. a kernel built without THP
            logger.debug("madvise(MADV_NOHUGEPAGE) refused: %s", exc)
    return np.frombuffer(region, dtype=dtype).reshape(shape)


class PastMirror:
    """Owns the buffer [L, 2 (K, V), KVH, capacity, D]; `buffers()` are its (layer, K|V) parts."""

    def __init__(self, config: ModelConfig, block_size: int, capacity: int,
                 dtype: np.dtype) -> None:
        self._layers = config.num_layers
        self._block_size = block_size
        self._data = zeroed_buffer((self._layers, 2, config.num_kv_heads, capacity,
                                    config.head_dim), dtype)
        self._seq_id: int | None = None
        self._blocks: list[int] = []  # the pool blocks holding positions [0, length)
        self.length = 0
        self.rebuilds = 0  # times the past was copied in from the pool (tests, logs)

    @property
    def seq_id(self) -> int | None:
        return self._seq_id

    @property
    def capacity(self) -> int:
        return self._data.shape[3]

    def prepare(self, seq: ScheduledSeq, pool: HostKVPool) -> None:
        """Makes the mirror hold `seq`'s past, positions [0, seq.start_pos), as in the pool."""
        past = seq.start_pos
        if (seq.seq_id == self._seq_id and past == self.length
                and list(seq.block_table[:len(self._blocks)]) == self._blocks):
            return
        blocks = list(seq.block_table[:-(-past // self._block_size)])
        self._data[:, :, :, :past] = pool.read(blocks, past)  # [L, 2, KVH, past, D]
        self._seq_id, self._blocks, self.length = seq.seq_id, blocks, past
        self.rebuilds += 1

    def buffers(self) -> list[np.ndarray]:
        """[1, KVH, capacity, D] per (layer, K|V), in the graph's past-input order; their
        memory never moves while the mirror is open."""
        return [self._data[layer, kv][None] for layer in range(self._layers) for kv in (0, 1)]

    def written(self) -> np.ndarray:
        """[L, 2, KVH, 1, D]: the K/V the last step wrote at position `length` (a view)."""
        return self._data[:, :, :, self.length:self.length + 1]

    def commit(self, seq: ScheduledSeq) -> None:
        """After the graph wrote `seq`'s token at position `length`: it is part of the past."""
        self.length += 1
        self._blocks = list(seq.block_table[:-(-self.length // self._block_size)])

    def invalidate(self) -> None:
        self._seq_id, self._blocks, self.length = None, [], 0

    def holds_any(self, seq_ids: set[int], blocks: set[int]) -> bool:
        """Whether the mirrored sequence is among `seq_ids` or owns one of `blocks`."""
        return self._seq_id is not None and (self._seq_id in seq_ids
                                             or not blocks.isdisjoint(self._blocks))

    def close(self) -> None:
        """Drops the buffer (its mapping goes with the last reference to it)."""
        self.invalidate()
        self._data = self._data[:, :, :, :0].copy()
