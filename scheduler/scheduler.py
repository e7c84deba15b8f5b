"""The in-flight batching scheduler: a synchronous state machine (no awaits, no threads).

Contract: `add(request)`, `schedule() -> StepPlan | None`, `update(plan, result) ->
list[RequestOutput]`, `abort(request_id)`, `fail_step(plan, error)` for a refused plan. Every
step first continues the running sequences (oldest first; a decode is one token, an unfinished
prompt a chunk), then admits waiting ones FCFS under the token budget, batch cap and free blocks.
Policies (TensorRT-LLM's): max_utilization preempts the newest by recompute when a running
sequence cannot get a block; guaranteed_no_evict admits only when prompt + max_tokens fits beside
what running sequences may still claim. Status changes only in `_finish`, `_preempt`, `_admit`."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq

import numpy as np

from scheduler.block_pool import BlockPool
from scheduler.config import SchedulerConfig
from scheduler.kv_cache import KVCacheManager, PrefixHit
from scheduler.outputs import SampledTokens, delta_output
from scheduler.plan import StepPlan, StepResult
from scheduler.request import QueueFullError, Request, RequestError, RequestOutput
from scheduler.sampling import SampleStats, is_greedy
from scheduler.sequence import SeqStatus, Sequence
from scheduler.stats import SchedulerStats
from scheduler.step_rows import apply_tokens, build_rows, sample_rows
from scheduler.validation import validate_params, validate_prompt

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: SchedulerConfig, *, block_size: int, num_blocks: int,
                 vocab_size: int, max_context: int, eos_token_ids: Seq[int] = (),
                 clock: Callable[[], float] = time.monotonic,
                 seed: int | None = None, device_sampling: bool = False) -> None:
        self.config = config
        self.device_sampling = device_sampling  # the executor samples on the device (plan.py)
        self.vocab_size = vocab_size
        self.max_model_len = config.resolve_max_model_len(max_context)
        self.eos_token_ids = tuple(eos_token_ids)
        self.clock = clock
        self.pool = BlockPool(num_blocks, block_size, config.enable_prefix_caching)
        self.kv = KVCacheManager(self.pool)
        self.waiting: deque[Sequence] = deque()  # FCFS; preempted ones re-enter at the front
        self.running: list[Sequence] = []  # in admission order (newest last)
        self._by_request: dict[str, Sequence] = {}
        self._by_seq: dict[int, Sequence] = {}
        self._seed_rng = np.random.default_rng(seed)  # seeds requests that bring no seed
        self._pending: list[RequestOutput] = []  # outputs produced outside update()
        self._logit_seqs: dict[int, list[Sequence]] = {}  # step id -> its logits rows' seqs
        self._step_seqs: dict[int, list[Sequence]] = {}  # step id -> its rows' seqs
        self.sample_stats = SampleStats()
        self._next_seq_id = 0
        self.step_id = 0
        self.preemptions_total = 0
        self.completed_total = 0
        self._last_context = 0
        self._last_generation = 0
        self._last_tokens = 0

    # ---- intake ----------
    def add(self, request: Request) -> None:
        """Validate and enqueue; raises RequestError / QueueFullError at once, never blocks."""
        if request.request_id in self._by_request:
            raise RequestError(f"request id {request.request_id!r} is already in flight")
        validate_params(request.params, self.max_model_len, self.vocab_size)
        validate_prompt(request.prompt_token_ids, request.params, self.max_model_len,
                        self.vocab_size, self.pool.num_blocks * self.pool.block_size)
        limit = self.config.max_queue_size
        if limit and len(self.waiting) >= limit:
            raise QueueFullError(f"waiting queue is full ({limit} requests)")
        seq = Sequence(self._next_seq_id, request, self._make_rng(request), self.eos_token_ids,
                       self.max_model_len)
        self._next_seq_id += 1
        self.waiting.append(seq)
        self._by_request[request.request_id] = seq
        self._by_seq[seq.seq_id] = seq
        logger.debug("queued %s (%d prompt tokens)", request.request_id, seq.num_prompt_tokens)

    def _make_rng(self, request: Request) -> np.random.Generator | None:
        params = request.params
        if is_greedy(params):
            return None
        seed = params.seed if params.seed is not None else int(self._seed_rng.integers(2**63))
        return np.random.default_rng(seed)

    # ---- scheduling ----------
    def schedule(self) -> StepPlan | None:
        """Build the next step, or None when nothing can run."""
        self._expire_queue_deadlines()
        budget = self.config.max_num_tokens
        preemptions_before = self.preemptions_total
        chosen, budget = self._schedule_running(budget)
        if self.preemptions_total == preemptions_before:
            chosen += self._admit_waiting(budget)
        if not chosen:  # nothing runs: the per-step counts of stats() read 0, not the last step's
            self._last_context = self._last_generation = self._last_tokens = 0
            return None
        self.step_id += 1
        return self._build_plan(chosen)

    def _schedule_running(self, budget: int) -> tuple[list[tuple[Sequence, int]], int]:
        chosen: list[tuple[Sequence, int]] = []
        allocate = self.kv.allocate_slots
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
        while not self.kv.allocate_slots(seq, n):
            assert self.config.policy == "max_utilization", (
                f"guaranteed_no_evict ran out of blocks for {seq}: reservation bug")
            victim = self.running.pop()
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _admit_waiting(self, budget: int) -> list[tuple[Sequence, int]]:
        chosen: list[tuple[Sequence, int]] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_batch_size:
            seq = self.waiting[0]
            hit = self.kv.find_prefix(seq)
            n = min(seq.num_tokens - hit.num_tokens, budget)
            if self.config.policy == "guaranteed_no_evict":
                need = self.kv.admission_cost(seq, hit, seq.max_kv_tokens)
                reserved = sum(self.kv.remaining_reservation(r) for r in self.running)
                available = self.pool.num_free - reserved
            else:
                need = self.kv.admission_cost(seq, hit, hit.num_tokens + n)
                available = self.pool.num_free
            if need > available:
                break
            self.waiting.popleft()
            self._admit(seq, hit, n)
            chosen.append((seq, n))
            budget -= n
        return chosen

    def _admit(self, seq: Sequence, hit: PrefixHit, n: int) -> None:
        self.kv.admit(seq, hit)
        ok = self.kv.allocate_slots(seq, n)
        assert ok, f"admission of {seq} passed the block check but allocation failed"
        if not seq.admitted_once:
            seq.num_cached_tokens = seq.num_computed_tokens
            seq.admitted_once = True
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.status = SeqStatus.PREEMPTED
        self.waiting.appendleft(seq)
        self.preemptions_total += 1
        logger.info("preempted %s (recompute %d tokens)", seq.request_id, seq.num_tokens)

    def _build_plan(self, chosen: list[tuple[Sequence, int]]) -> StepPlan:
        rows, self._last_context, self._last_generation, self._last_tokens = build_rows(
            chosen, self.device_sampling)
        seqs = [seq for seq, _ in chosen]
        self._step_seqs[self.step_id] = seqs
        self._logit_seqs[self.step_id] = [seq for seq, r in zip(seqs, rows, strict=True)
                                          if r.want_logits]
        return StepPlan(step_id=self.step_id, seqs=rows, block_copies=self.kv.take_copies())

    def _expire_queue_deadlines(self) -> None:
        now = self.clock()
        expired = [s for s in self.waiting if not s.admitted_once
                   and s.request.queue_deadline is not None and now >= s.request.queue_deadline]
        for seq in expired:
            self.waiting.remove(seq)
            seq.error = f"queue timeout: {seq.request_id} waited in the queue past its deadline"
            seq.error_type = "QueueTimeoutError"
            self._pending.append(self._finish(seq, SeqStatus.FINISHED_ERROR))

    # ---- results ----------
    def sample_step(self, plan: StepPlan, result: StepResult) -> SampledTokens:
        """Choose the next token of every logits row of `plan`.

        Reads only state that nothing changes while the plan is in flight (token lists are
        appended by update(), RNGs are used only here), so the loop runs this in its worker
        thread right after the executor call, keeping sampling off the event loop."""
        return sample_rows(plan, result, self._logit_seqs[plan.step_id], self.sample_stats)

    def update(self, plan: StepPlan, result: StepResult,
               sampled: SampledTokens | None = None) -> list[RequestOutput]:
        """Apply a step: register full KV blocks, append sampled tokens (sampling here unless
        `sampled` came from sample_step), finish; return per-request deltas."""
        if sampled is None:
            sampled = self.sample_step(plan, result)
        assert sampled.step_id == plan.step_id, "sampled tokens of another step"
        self._logit_seqs.pop(plan.step_id, None)
        cache_blocks = self.kv.cache_computed_blocks
        for seq in self._step_seqs.pop(plan.step_id, ()):
            if seq.status is SeqStatus.RUNNING:
                cache_blocks(seq)
        outputs = self.drain_outputs()
        completed_before = self.completed_total
        outputs += apply_tokens(sampled, self.max_model_len, self._finish)
        if self.completed_total != completed_before:  # one pass, not a remove() per finish
            self.running = [s for s in self.running if s.status is SeqStatus.RUNNING]
        return outputs

    def drain_outputs(self) -> list[RequestOutput]:
        """Outputs produced by schedule()/abort bookkeeping (queue timeouts) since last drained."""
        out, self._pending = self._pending, []
        return out

    # ---- endings ----------
    def _finish(self, seq: Sequence, status: SeqStatus) -> RequestOutput:
        """The one place a sequence becomes finished: frees its KV and forgets it."""
        assert status.is_finished and not seq.is_finished, f"{seq} -> {status.name}"
        self.kv.free(seq)
        seq.status = status
        del self._by_request[seq.request_id]
        del self._by_seq[seq.seq_id]
        self.completed_total += 1
        logger.debug("finished %s: %s", seq.request_id, status.name)
        return delta_output(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Finish a request with ABORT in any state; None if unknown or already finished."""
        seq = self._by_request.get(request_id)
        if seq is None:
            return None
        if seq.status == SeqStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        return self._finish(seq, SeqStatus.FINISHED_ABORTED)

    def fail_step(self, plan: StepPlan, error: str) -> list[RequestOutput]:
        """ERROR for the running requests of a plan the executor refused; nothing was cached."""
        self._logit_seqs.pop(plan.step_id, None)
        for seq in self._step_seqs.pop(plan.step_id, ()):
            if seq.status is SeqStatus.RUNNING:
                seq.error, seq.error_type = error, "StepRefusedError"
                self._pending.append(self._finish(seq, SeqStatus.FINISHED_ERROR))
        self.running = [s for s in self.running if s.status is SeqStatus.RUNNING]
        return self.drain_outputs()

    def fail_all(self, error: str) -> list[RequestOutput]:
        """Finish every unfinished request with ERROR (the engine failed)."""
        outputs = self.drain_outputs()
        self._logit_seqs.clear()
        self._step_seqs.clear()
        for seq in [*self.running, *self.waiting]:
            seq.error, seq.error_type = error, "EngineError"
            outputs.append(self._finish(seq, SeqStatus.FINISHED_ERROR))
        self.running.clear()
        self.waiting.clear()
        return outputs

    # ---- introspection ----------
    @property
    def num_unfinished(self) -> int:
        return len(self._by_request)

    def request_ids(self) -> list[str]:
        return list(self._by_request)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self._pending)

    def check_integrity(self) -> None:
        """Raise IntegrityError/AssertionError if KV bookkeeping or queues are inconsistent."""
        for seq in self.waiting:
            assert not seq.block_table, seq
            assert seq.status in (SeqStatus.WAITING, SeqStatus.PREEMPTED), seq
        for seq in self.running:
            assert seq.status == SeqStatus.RUNNING, seq
        assert len(self.running) + len(self.waiting) == len(self._by_request) == len(self._by_seq)
        self.pool.check_integrity(s.block_table for s in self.running)

    def stats(self, step_time_s: float = 0.0) -> SchedulerStats:
        return SchedulerStats(
            step_id=self.step_id, num_running=len(self.running), num_waiting=len(self.waiting),
            num_context_requests=self._last_context,
            num_generation_requests=self._last_generation,
            num_scheduled_tokens=self._last_tokens,
            max_batch_size=self.config.max_batch_size, max_num_tokens=self.config.max_num_tokens,
            blocks_total=self.pool.num_blocks, blocks_free=self.pool.num_free,
            blocks_used=self.pool.num_used, blocks_cached=self.pool.num_cached_free,
            tokens_per_block=self.pool.block_size, preemptions_total=self.preemptions_total,
            prefix_cache_queries_total=self.kv.queries_total,
            prefix_cache_hits_total=self.kv.hits_total,
            requests_completed_total=self.completed_total, step_time_s=step_time_s)
