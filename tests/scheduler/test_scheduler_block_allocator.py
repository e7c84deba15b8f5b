"""BlockAllocator: free xor referenced, ref counts, LRU eviction of cached blocks, integrity
check."""

from __future__ import annotations

import pytest

from scheduler.block_allocator import BlockAllocator, IntegrityError, hash_block


def test_allocate_free_roundtrip() -> None:
    """Allocated blocks leave the free list with ref 1 and come back when freed."""
    pool = BlockAllocator(4, 4)
    got = pool.allocate(3)
    assert got == [0, 1, 2]
    assert pool.num_free == 1 and [pool.ref_count(b) for b in range(4)] == [1, 1, 1, 0]
    pool.check_integrity([got])
    pool.free(got)
    assert pool.num_free == 4
    pool.check_integrity([])


def test_over_allocation_raises() -> None:
    """Asking for more blocks than are free is an impossible state for callers: ValueError."""
    pool = BlockAllocator(2, 4)
    with pytest.raises(ValueError, match="only 2 free"):
        pool.allocate(3)


def test_double_free_raises() -> None:
    """Freeing a block twice is caught immediately."""
    pool = BlockAllocator(2, 4)
    b = pool.allocate(1)
    pool.free(b)
    with pytest.raises(IntegrityError, match="double free of block 0"):
        pool.free(b)


def test_shared_block_refcount() -> None:
    """touch() adds references; the block is free only after the last one is dropped."""
    pool = BlockAllocator(2, 4)
    (b,) = pool.allocate(1)
    pool.cache_block(b, 123)
    pool.touch([b])
    assert pool.ref_count(b) == 2
    pool.check_integrity([[b], [b]])
    pool.free([b])
    assert pool.num_free == 1
    pool.free([b])
    assert pool.num_free == 2 and pool.lookup(123) == b and pool.num_cached_free == 1


def test_cached_blocks_evicted_lru_and_only_when_free() -> None:
    """Freed cached blocks stay findable; allocation reuses uncached blocks first, then the
    least recently freed cached one."""
    pool = BlockAllocator(3, 4)
    a, b, c = pool.allocate(3)
    pool.cache_block(a, 1)
    pool.cache_block(b, 2)
    pool.free([a])
    pool.free([b])
    pool.free([c])  # uncached -> reused first
    assert pool.allocate(1) == [c]
    assert pool.lookup(1) == a and pool.lookup(2) == b
    assert pool.allocate(1) == [a]  # a was freed before b
    assert pool.lookup(1) is None and pool.lookup(2) == b
    pool.check_integrity([[c], [a]])


def test_reviving_a_cached_free_block() -> None:
    """touch() on a free cached block takes it off the free list without evicting it."""
    pool = BlockAllocator(2, 4)
    (a,) = pool.allocate(1)
    pool.cache_block(a, 7)
    pool.free([a])
    pool.touch([a])
    assert pool.num_free == 1 and pool.ref_count(a) == 1 and pool.lookup(7) == a
    assert pool.allocate(1) == [1]


def test_first_writer_wins_for_duplicate_hashes() -> None:
    """Two blocks with identical content: the hash keeps pointing at the first one."""
    pool = BlockAllocator(2, 4)
    a, b = pool.allocate(2)
    pool.cache_block(a, 5)
    pool.cache_block(b, 5)
    assert pool.lookup(5) == a
    pool.free([a, b])
    assert pool.num_cached_free == 1  # b was never cached


def test_integrity_detects_leak_and_wrong_refcount() -> None:
    """A referenced block nobody names, or a ref count that disagrees, is reported."""
    pool = BlockAllocator(3, 4)
    blocks = pool.allocate(2)
    with pytest.raises(IntegrityError, match="block 1: ref 1 != 0"):
        pool.check_integrity([blocks[:1]])
    with pytest.raises(IntegrityError, match="block 0: ref 1 != 2"):
        pool.check_integrity([blocks, blocks[:1]])


def test_chained_hash_depends_on_prefix_and_salt() -> None:
    """Same block tokens under a different parent or salt hash differently."""
    h1 = hash_block(None, [1, 2], "")
    assert hash_block(None, [1, 2], "") == h1
    assert hash_block(h1, [1, 2], "") != hash_block(None, [1, 2], "")
    assert hash_block(None, [1, 2], "lora-a") != h1
