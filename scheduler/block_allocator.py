"""The block allocator: the only code that touches the free list, ref counts and the prefix cache.

Host-side bookkeeping of block *ids* only; the KV tensors themselves live in the executor's KV
pool (engine/host_kv_pool.py in host memory, engine/device_kv_pool.py in device memory). Blocks
are fixed-size pages of that pool, ids 0..num_blocks-1. A block is either
free (on the free list, ref count 0) or referenced by one or more sequences (ref count > 0),
never both. A full block may carry a hash of its content (chained over all previous blocks plus
a salt) and be found again by that hash; it stays findable after it is freed, until the free list
hands it out again (LRU eviction: freed cached blocks go to the back of the free list, uncached
ones to the front, allocation takes from the front).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class IntegrityError(RuntimeError):
    """The allocator's bookkeeping disagrees with the sequences' block tables (a bug)."""


def hash_block(parent: int | None, tokens: Sequence[int], salt: str) -> int:
    """Chained content hash of one full block: equal iff the whole prefix (and salt) is equal.

    Python's 64-bit tuple hash of ints/str is deterministic within a process (str hashing is
    randomized per process, which is fine: the cache never leaves the process).
    """
    return hash((parent, tuple(tokens), salt))


class BlockAllocator:
    """Free list + ref counts + hash -> block map over `num_blocks` block ids (no KV data)."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks  # content hash of a cached block
        self._by_hash: dict[int, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._num_cached_free = 0  # free blocks that still carry a hash

    # ---- queries ----------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_free(self) -> int:
        return self._num_cached_free

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    def lookup(self, block_hash: int) -> int | None:
        """The block holding this content, free or in use, or None."""
        return self._by_hash.get(block_hash)

    # ---- mutations ----------
    def allocate(self, n: int) -> list[int]:
        """n fresh blocks with ref count 1, evicting the least recently freed cached ones."""
        if n > len(self._free):
            raise ValueError(f"cannot allocate {n} blocks: only {len(self._free)} free")
        out = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            if self._hash[block] is not None:
                self._num_cached_free -= 1
                self._evict(block)
            self._ref[block] = 1
            out.append(block)
        return out

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take one more reference on each (cached) block, pulling it off the free list if free."""
        for block in block_ids:
            if self._ref[block] == 0:
                del self._free[block]
                self._num_cached_free -= self._hash[block] is not None
            self._ref[block] += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference on each block; tail blocks first so prefixes are evicted last."""
        for block in reversed(block_ids):
            if self._ref[block] <= 0:
                raise IntegrityError(f"double free of block {block}")
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    self._free.move_to_end(block, last=False)
                else:
                    self._num_cached_free += 1

    def cache_block(self, block_id: int, block_hash: int) -> None:
        """Make a full, referenced block findable by its content hash (first writer wins)."""
        if not self.enable_caching or self._hash[block_id] is not None:
            return
        if block_hash in self._by_hash:
            return
        self._hash[block_id] = block_hash
        self._by_hash[block_hash] = block_id

    def _evict(self, block: int) -> None:
        h = self._hash[block]
        if h is not None:
            del self._by_hash[h]
            self._hash[block] = None

    # ---- corruption detection ----------
    def check_integrity(self, block_tables: Iterable[Sequence[int]]) -> None:
        """Raise IntegrityError unless every block is free xor referenced, and ref counts equal
        the number of times live block tables name each block."""
        expected = [0] * self.num_blocks
        for table in block_tables:
            for block in table:
                if not 0 <= block < self.num_blocks:
                    raise IntegrityError(f"block id {block} out of range")
                expected[block] += 1
        for block in range(self.num_blocks):
            ref, is_free = self._ref[block], block in self._free
            if ref != expected[block]:
                raise IntegrityError(f"block {block}: ref {ref} != {expected[block]} references")
            if is_free == (ref > 0):
                raise IntegrityError(f"block {block}: free={is_free} with ref count {ref}")
        for h, block in self._by_hash.items():
            if self._hash[block] != h:
                raise IntegrityError(f"hash map points at block {block} holding another hash")
        if sum(h is not None for h in self._hash) != len(self._by_hash):
            raise IntegrityError("hashed blocks and hash map disagree")
        cached_free = sum(1 for b in self._free if self._hash[b] is not None)
        if cached_free != self._num_cached_free:
            raise IntegrityError(f"cached free count {self._num_cached_free} != {cached_free}")
