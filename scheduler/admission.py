"""Who runs in a step: the waiting queue, the running batch, admission and preemption.

Every step first continues the running sequences (oldest first; a decode is one token, an
unfinished prompt a chunk), then admits waiting ones FCFS under the token budget, batch cap and
free blocks. Policies (TensorRT-LLM's): max_utilization preempts the newest by recompute when a
running sequence cannot get a block; guaranteed_no_evict admits only when prompt + max_tokens
fits beside what running sequences may still claim. A sequence becomes RUNNING or PREEMPTED only
here (`_admit`, `_preempt`); the Scheduler finishes it.
"""

from __future__ import annotations

import logging
from collections import deque

from scheduler.block_allocator import BlockAllocator
from scheduler.block_tables import BlockTables, PrefixHit
from scheduler.config import SchedulerConfig
from scheduler.sequence import SeqStatus, Sequence

logger = logging.getLogger(__name__)

Chosen = list[tuple[Sequence, int]]  # (sequence, tokens it runs this step), plan order


class Admission:
    """The two queues of live sequences and the decisions that move sequences between them."""

    def __init__(self, config: SchedulerConfig, allocator: BlockAllocator,
                 tables: BlockTables) -> None:
        self.config = config
        self.allocator = allocator
        self.tables = tables
        self.waiting: deque[Sequence] = deque()  # FCFS; preempted ones re-enter at the front
        self.running: list[Sequence] = []  # in admission order (newest last)
        self.preemptions_total = 0

    def choose(self, budget: int) -> Chosen:
        """The sequences of the next step; after a preemption nobody new is admitted."""
        preemptions_before = self.preemptions_total
        chosen, budget = self._schedule_running(budget)
        if self.preemptions_total == preemptions_before:
            chosen += self._admit_waiting(budget)
        return chosen

    def remove(self, seq: Sequence) -> None:
        """Take an unfinished sequence out of whichever queue holds it."""
        if seq.status == SeqStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)

    def drop_finished(self) -> None:
        """Forget running sequences that finished (one pass, not a remove() per finish)."""
        self.running = [s for s in self.running if s.status is SeqStatus.RUNNING]

    def take_all(self) -> list[Sequence]:
        """Empty both queues; returns what they held, running first."""
        seqs = [*self.running, *self.waiting]
        self.running.clear()
        self.waiting.clear()
        return seqs

    @property
    def num_live(self) -> int:
        return len(self.running) + len(self.waiting)

    def check_integrity(self) -> None:
        """AssertionError unless each queue holds sequences of its statuses and waiting ones hold
        no blocks; IntegrityError unless the allocator agrees with the running block tables."""
        for seq in self.waiting:
            assert not seq.block_table, seq
            assert seq.status in (SeqStatus.WAITING, SeqStatus.PREEMPTED), seq
        for seq in self.running:
            assert seq.status == SeqStatus.RUNNING, seq
        self.allocator.check_integrity(s.block_table for s in self.running)

    def _schedule_running(self, budget: int) -> tuple[Chosen, int]:
        chosen: Chosen = []
        allocate = self.tables.allocate_slots
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if not allocate(seq, n) and not self._make_room(seq, n):
                break  # seq itself was preempted; it was the newest
            chosen.append((seq, n))
            budget -= n
            i += 1
        return chosen, budget

    def _make_room(self, seq: Sequence, n: int) -> bool:
        """Preempt the newest running sequences until seq gets room; False if seq was one."""
        while not self.tables.allocate_slots(seq, n):
            assert self.config.policy == "max_utilization", (
                f"guaranteed_no_evict ran out of blocks for {seq}: reservation bug")
            victim = self.running.pop()
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _admit_waiting(self, budget: int) -> Chosen:
        chosen: Chosen = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_batch_size:
            seq = self.waiting[0]
            hit = self.tables.find_prefix(seq)
            n = min(seq.num_tokens - hit.num_tokens, budget)
            if self.config.policy == "guaranteed_no_evict":
                need = self.tables.admission_cost(seq, hit, seq.max_kv_tokens)
                reserved = sum(self.tables.remaining_reservation(r) for r in self.running)
                available = self.allocator.num_free - reserved
            else:
                need = self.tables.admission_cost(seq, hit, hit.num_tokens + n)
                available = self.allocator.num_free
            if need > available:
                break
            self.waiting.popleft()
            self._admit(seq, hit, n)
            chosen.append((seq, n))
            budget -= n
        return chosen

    def _admit(self, seq: Sequence, hit: PrefixHit, n: int) -> None:
        self.tables.admit(seq, hit)
        ok = self.tables.allocate_slots(seq, n)
        assert ok, f"admission of {seq} passed the block check but allocation failed"
        if not seq.admitted_once:
            seq.num_cached_tokens = seq.num_computed_tokens
            seq.admitted_once = True
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.tables.free(seq)
        seq.status = SeqStatus.PREEMPTED
        self.waiting.appendleft(seq)
        self.preemptions_total += 1
        logger.info("preempted %s (recompute %d tokens)", seq.request_id, seq.num_tokens)
