"""Per-sequence block tables over the BlockAllocator: prefix-cache hits, growth, copy-on-write.

The Scheduler asks here whether a sequence can get room for `n` more tokens and receives plain
answers (a count, True/False); it never sees the free list or ref counts. Like the
allocator, this is bookkeeping of block ids on the host: no KV data passes through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from scheduler.block_allocator import BlockAllocator, hash_block
from scheduler.sequence import Sequence

logger = logging.getLogger(__name__)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(slots=True)
class PrefixHit:
    """Result of a prefix-cache lookup for a sequence about to be admitted."""

    blocks: list[int]  # cached blocks covering the start of the sequence, in order
    num_tokens: int  # tokens those blocks let the sequence skip (always < seq.num_tokens)


class BlockTables:
    """Edits every sequence's `block_table` (and nothing else does), over one BlockAllocator."""

    def __init__(self, allocator: BlockAllocator) -> None:
        self.allocator = allocator
        self.block_size = allocator.block_size
        self._copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) for the next plan
        self.queries_total = 0  # prompt blocks looked up in the prefix cache
        self.hits_total = 0  # prompt blocks found there

    # ---- hashing ----------
    def update_hashes(self, seq: Sequence) -> None:
        """Extend seq.block_hashes to cover every full block of its tokens."""
        bs, salt = self.block_size, seq.request.cache_salt
        for i in range(len(seq.block_hashes), seq.num_tokens // bs):
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            tokens = seq.tokens_slice(i * bs, (i + 1) * bs)
            seq.block_hashes.append(hash_block(parent, tokens, salt))

    # ---- admission ----------
    def find_prefix(self, seq: Sequence) -> PrefixHit:
        """Longest run of cached full blocks at the start of seq (no references taken)."""
        if not self.allocator.enable_caching or seq.num_computed_tokens > 0:
            return PrefixHit([], 0)
        self.update_hashes(seq)
        blocks: list[int] = []
        for h in seq.block_hashes:
            block = self.allocator.lookup(h)
            if block is None:
                break
            blocks.append(block)
        # at least the last token must run so that its logits exist
        return PrefixHit(blocks, min(len(blocks) * self.block_size, seq.num_tokens - 1))

    def admission_cost(self, seq: Sequence, hit: PrefixHit, num_kv_tokens: int) -> int:
        """Free blocks consumed if seq is admitted with `hit` and KV room for num_kv_tokens."""
        revived = sum(1 for b in hit.blocks if self.allocator.ref_count(b) == 0)
        new = max(0, cdiv(num_kv_tokens, self.block_size) - len(hit.blocks))
        return revived + new + self._cow_needed(hit.blocks, hit.num_tokens, own_refs=0)

    def _cow_needed(self, blocks: list[int], num_tokens: int, own_refs: int) -> int:
        """1 if the token after the first num_tokens lands in one of `blocks` that someone else
        uses too (beyond the own_refs references this sequence holds): it must be copied."""
        idx = num_tokens // self.block_size
        return int(idx < len(blocks) and self.allocator.ref_count(blocks[idx]) > own_refs)

    def admit(self, seq: Sequence, hit: PrefixHit) -> None:
        """Give seq the hit blocks (one reference each) and skip their tokens."""
        assert not seq.block_table, f"admitting {seq} that still holds blocks"
        self.queries_total += len(seq.block_hashes)
        self.hits_total += len(hit.blocks)
        self.allocator.touch(hit.blocks)
        seq.block_table = list(hit.blocks)
        seq.num_hit_blocks = len(hit.blocks)
        seq.num_computed_tokens = hit.num_tokens

    # ---- growth ----------
    def blocks_for(self, seq: Sequence, num_new_tokens: int) -> int:
        """Free blocks needed so seq can write num_new_tokens more (including copy-on-write)."""
        total = cdiv(seq.num_computed_tokens + num_new_tokens, self.block_size)
        return max(0, total - len(seq.block_table)) + self._write_target_shared(seq)

    def _write_target_shared(self, seq: Sequence) -> int:
        return self._cow_needed(seq.block_table, seq.num_computed_tokens, own_refs=1)

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make seq's block table cover num_new_tokens more tokens; False if blocks are short.

        Only a block from a prefix-cache hit can be shared (blocks this sequence allocated are
        registered in the cache only once full, i.e. behind its write position), so the
        ref-count check runs only while the write position is inside the hit blocks."""
        computed = seq.num_computed_tokens
        if computed + num_new_tokens <= len(seq.block_table) * self.block_size and (
                computed // self.block_size >= seq.num_hit_blocks
                or not self._write_target_shared(seq)):
            return True  # fast path (e.g. decode inside the last block): nothing to do
        if self.blocks_for(seq, num_new_tokens) > self.allocator.num_free:
            return False
        if self._write_target_shared(seq):
            self._copy_on_write(seq, seq.num_computed_tokens // self.block_size)
        total = cdiv(seq.num_computed_tokens + num_new_tokens, self.block_size)
        missing = total - len(seq.block_table)
        if missing > 0:
            seq.block_table.extend(self.allocator.allocate(missing))
        return True

    def _copy_on_write(self, seq: Sequence, idx: int) -> None:
        src = seq.block_table[idx]
        (dst,) = self.allocator.allocate(1)
        self.allocator.free([src])
        seq.block_table[idx] = dst
        self._copies.append((src, dst))
        logger.debug("copy-on-write for %s: block %d -> %d", seq.request_id, src, dst)

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self._copies = self._copies, []
        return copies

    # ---- after a step / release ----------------------------------------------------------------
    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register every block that is now full of computed KV under its content hash."""
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_registered_blocks or not self.allocator.enable_caching:
            return  # the common case: no block filled up this step
        full = min(full, len(seq.block_table))
        self.update_hashes(seq)
        for i in range(seq.num_registered_blocks, full):
            self.allocator.cache_block(seq.block_table[i], seq.block_hashes[i])
        seq.num_registered_blocks = max(seq.num_registered_blocks, full)

    def free(self, seq: Sequence) -> None:
        """Release every block seq holds (exactly once: the table is emptied)."""
        if seq.block_table:
            self.allocator.free(seq.block_table)
            seq.block_table = []
        seq.num_hit_blocks = 0
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0

    def remaining_reservation(self, seq: Sequence) -> int:
        """Blocks seq may still ask for before it reaches max_kv_tokens (guaranteed_no_evict)."""
        return max(0, cdiv(seq.max_kv_tokens, self.block_size) - len(seq.block_table))
