"""The in-flight batching scheduler: a synchronous state machine (no awaits, no threads).

Contract: `add(request)`, `schedule() -> StepPlan | None`, `update(plan, result) ->
list[RequestOutput]`, `abort(request_id)`, `fail_step(plan, error)` for a refused plan. Who runs
in a step (admission, preemption, the two queues) is admission.py's; this class takes requests
in, turns the chosen sequences into a plan, applies results and ends requests. Status changes
only in `_finish` here and in Admission's `_admit`, `_preempt`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq

import numpy as np

from scheduler.admission import Admission, Chosen
from scheduler.block_allocator import BlockAllocator
from scheduler.block_tables import BlockTables
from scheduler.config import SchedulerConfig
from scheduler.outputs import SampledTokens, delta_output
from scheduler.plan import StepPlan, StepResult
from scheduler.request import ErrorKind, QueueFullError, Request, RequestError, RequestOutput
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
        self.allocator = BlockAllocator(num_blocks, block_size, config.enable_prefix_caching)
        self.tables = BlockTables(self.allocator)
        self.admission = Admission(config, self.allocator, self.tables)
        self._by_request: dict[str, Sequence] = {}
        self._by_seq: dict[int, Sequence] = {}
        self._seed_rng = np.random.default_rng(seed)  # seeds requests that bring no seed
        self._pending: list[RequestOutput] = []  # outputs produced outside update()
        self._logit_seqs: dict[int, list[Sequence]] = {}  # step id -> its logits rows' seqs
        self._step_seqs: dict[int, list[Sequence]] = {}  # step id -> its rows' seqs
        self.sample_stats = SampleStats()
        self._next_seq_id = 0
        self.step_id = 0
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
                        self.vocab_size, self.allocator.num_blocks * self.allocator.block_size)
        limit = self.config.max_queue_size
        if limit and len(self.admission.waiting) >= limit:
            raise QueueFullError(f"waiting queue is full ({limit} requests)")
        seq = Sequence(self._next_seq_id, request, self._make_rng(request), self.eos_token_ids,
                       self.max_model_len)
        self._next_seq_id += 1
        self.admission.waiting.append(seq)
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
        chosen = self.admission.choose(self.config.max_num_tokens)
        if not chosen:  # nothing runs: the per-step counts of stats() read 0, not the last step's
            self._last_context = self._last_generation = self._last_tokens = 0
            return None
        self.step_id += 1
        return self._build_plan(chosen)

    def _build_plan(self, chosen: Chosen) -> StepPlan:
        rows, self._last_context, self._last_generation, self._last_tokens = build_rows(
            chosen, self.device_sampling)
        seqs = [seq for seq, _ in chosen]
        self._step_seqs[self.step_id] = seqs
        self._logit_seqs[self.step_id] = [seq for seq, r in zip(seqs, rows, strict=True)
                                          if r.want_logits]
        return StepPlan(step_id=self.step_id, seqs=rows, block_copies=self.tables.take_copies())

    def _expire_queue_deadlines(self) -> None:
        now = self.clock()
        expired = [s for s in self.admission.waiting if not s.admitted_once
                   and s.request.queue_deadline is not None and now >= s.request.queue_deadline]
        for seq in expired:
            self.admission.waiting.remove(seq)
            seq.error = f"queue timeout: {seq.request_id} waited in the queue past its deadline"
            seq.error_type = ErrorKind.QUEUE_TIMEOUT
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
        cache_blocks = self.tables.cache_computed_blocks
        for seq in self._step_seqs.pop(plan.step_id, ()):
            if seq.status is SeqStatus.RUNNING:
                cache_blocks(seq)
        outputs = self.drain_outputs()
        completed_before = self.completed_total
        outputs += apply_tokens(sampled, self.max_model_len, self._finish)
        if self.completed_total != completed_before:  # one pass, not a remove() per finish
            self.admission.drop_finished()
        return outputs

    def drain_outputs(self) -> list[RequestOutput]:
        """Outputs produced by schedule()/abort bookkeeping (queue timeouts) since last drained."""
        out, self._pending = self._pending, []
        return out

    # ---- endings ----------
    def _finish(self, seq: Sequence, status: SeqStatus) -> RequestOutput:
        """The one place a sequence becomes finished: frees its KV and forgets it."""
        assert status.is_finished and not seq.is_finished, f"{seq} -> {status.name}"
        self.tables.free(seq)
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
        self.admission.remove(seq)
        return self._finish(seq, SeqStatus.FINISHED_ABORTED)

    def fail_step(self, plan: StepPlan, error: str) -> list[RequestOutput]:
        """ERROR for the running requests of a plan the executor refused; nothing was cached."""
        self._logit_seqs.pop(plan.step_id, None)
        for seq in self._step_seqs.pop(plan.step_id, ()):
            if seq.status is SeqStatus.RUNNING:
                seq.error, seq.error_type = error, ErrorKind.STEP_REFUSED
                self._pending.append(self._finish(seq, SeqStatus.FINISHED_ERROR))
        self.admission.drop_finished()
        return self.drain_outputs()

    def fail_all(self, error: str) -> list[RequestOutput]:
        """Finish every unfinished request with ERROR (the engine failed)."""
        outputs = self.drain_outputs()
        self._logit_seqs.clear()
        self._step_seqs.clear()
        for seq in self.admission.take_all():
            seq.error, seq.error_type = error, ErrorKind.ENGINE
            outputs.append(self._finish(seq, SeqStatus.FINISHED_ERROR))
        return outputs

    # ---- introspection ----------
    @property
    def num_unfinished(self) -> int:
        return len(self._by_request)

    def request_ids(self) -> list[str]:
        return list(self._by_request)

    def has_work(self) -> bool:
        return bool(self.admission.running or self.admission.waiting or self._pending)

    def check_integrity(self) -> None:
        """Raise IntegrityError/AssertionError if KV bookkeeping or queues are inconsistent."""
        self.admission.check_integrity()
        assert self.admission.num_live == len(self._by_request) == len(self._by_seq)

    def stats(self, step_time_s: float = 0.0) -> SchedulerStats:
        queues, blocks = self.admission, self.allocator
        return SchedulerStats(
            step_id=self.step_id, num_running=len(queues.running), num_waiting=len(queues.waiting),
            num_context_requests=self._last_context,
            num_generation_requests=self._last_generation,
            num_scheduled_tokens=self._last_tokens,
            max_batch_size=self.config.max_batch_size, max_num_tokens=self.config.max_num_tokens,
            blocks_total=blocks.num_blocks, blocks_free=blocks.num_free,
            blocks_used=blocks.num_used, blocks_cached=blocks.num_cached_free,
            tokens_per_block=blocks.block_size,
            preemptions_total=queues.preemptions_total,
            prefix_cache_queries_total=self.tables.queries_total,
            prefix_cache_hits_total=self.tables.hits_total,
            requests_completed_total=self.completed_total, step_time_s=step_time_s)
