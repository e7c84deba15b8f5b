"""One sequence's past K/V laid out for the single-token graph (engine/graph/single_token.py):
per layer and K|V a contiguous [S, KVH, D] array that the graph reads in place, so that a
single-sequence decode step gathers nothing from the paged pool.

The mirror holds the past of at most one sequence. It is (re)built from the pool when a step
asks for a sequence, past length or block table other than the one it holds (a copy of the
whole past, once per switch), appended with each step's new K/V (the same values written into
the pool), and dropped whenever another graph call writes that sequence's K/V or a block copy
lands in its blocks: the pool stays the one source of truth.

Its array is sized for the whole context but allocated zeroed (calloc: pages become resident
only when written). With transparent huge pages that is 2 MiB at a time in each (layer, K|V)
region: measured for SmolLM2 (60 regions of 768 B a token), 119 MiB resident after 100
positions, 2 MiB more per region every ~2,700 tokens up to the whole 377 MiB.

The graph sees the first `bound` positions, the past length rounded up to BOUND_STEP: the views
keep their shape (and the executor its input bindings) for BOUND_STEP steps, and the graph masks
the positions past the sequence's length (zeros, or an earlier sequence's finite values).
"""

from __future__ import annotations

import numpy as np

from engine.config import ModelConfig
from engine.host_kv_pool import HostKVPool
from scheduler.plan import ScheduledSeq

BOUND_STEP = 32  # tokens: the views' length is the past length rounded up to this


class PastMirror:
    """Owns the mirror array [L, 2 (K, V), max_context, KVH, D]; `views()` are its first `bound`
    positions per (layer, K|V), each contiguous."""

    def __init__(self, config: ModelConfig, block_size: int, max_context: int,
                 dtype: np.dtype) -> None:
        self._layers = config.num_layers
        self._block_size = block_size
        self._data = np.zeros((self._layers, 2, max_context, config.num_kv_heads,
                               config.head_dim), dtype=dtype)
        self._seq_id: int | None = None
        self._blocks: list[int] = []  # the pool blocks holding positions [0, length)
        self.length = 0
        self.rebuilds = 0  # times the past was copied in from the pool (tests, logs)

    @property
    def seq_id(self) -> int | None:
        return self._seq_id

    def prepare(self, seq: ScheduledSeq, pool: HostKVPool) -> None:
        """Makes the mirror hold `seq`'s past, positions [0, seq.start_pos), as in the pool."""
        past = seq.start_pos
        if (seq.seq_id == self._seq_id and past == self.length
                and list(seq.block_table[:len(self._blocks)]) == self._blocks):
            return
        blocks = list(seq.block_table[:-(-past // self._block_size)])
        kv = pool.read(blocks, past)  # [L, 2, KVH, past, D]
        self._data[:, :, :past] = kv.transpose(0, 1, 3, 2, 4)
        self._seq_id, self._blocks, self.length = seq.seq_id, blocks, past
        self.rebuilds += 1

    @property
    def bound(self) -> int:
        """Positions the graph sees: the past length rounded up to BOUND_STEP, at least
        BOUND_STEP, at most the capacity."""
        return min(self._data.shape[2], max(BOUND_STEP, -(-self.length // BOUND_STEP)
                                            * BOUND_STEP))

    def views(self) -> list[np.ndarray]:
        """[bound, KVH, D] per (layer, K|V), in the graph's past-input order."""
        return [self._data[layer, kv, :self.bound]
                for layer in range(self._layers) for kv in (0, 1)]

    def append(self, seq: ScheduledSeq, new_kv: np.ndarray) -> None:
        """After the step of `seq`'s one token at position `length`: new_kv [L, 2, KVH, 1, D]."""
        self._data[:, :, self.length] = new_kv[:, :, :, 0]
        self.length += 1
        self._blocks = list(seq.block_table[:-(-self.length // self._block_size)])

    def invalidate(self) -> None:
        self._seq_id, self._blocks, self.length = None, [], 0

    def holds_any(self, seq_ids: set[int], blocks: set[int]) -> bool:
        """Whether the mirrored sequence is among `seq_ids` or owns one of `blocks`."""
        return self._seq_id is not None and (self._seq_id in seq_ids
                                             or not blocks.isdisjoint(self._blocks))

    def close(self) -> None:
        self.invalidate()
        self._data = self._data[:, :, :0].copy()
