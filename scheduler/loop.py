"""The asyncio side: one task drives the synchronous Scheduler and a blocking executor.

Each iteration: schedule step N+1, start `executor.execute` + sampling (`Scheduler.sample_step`)
in a single worker thread (so the event loop never stalls on the forward pass or on numpy
sampling, and the executor always runs on the same thread), THEN hand step N's
deltas to the per-request queues and call `on_step` while N+1 runs; stream consumers
(detokenization, SSE writes) run on the event loop during the executor call. Scheduling of N+1
itself cannot overlap execution of N: its decode tokens are the samples of N.
Idle: the loop awaits an asyncio.Event set by `add` (no polling), after running the integrity
check and handing `on_step` one idle snapshot (nothing scheduled, step_time_s 0), so gauges
fed from it do not keep the last step's counts. A plan the executor refuses (StepRefusedError)
fails only its own requests; on any other executor/update exception every unfinished request
gets a final ERROR output, `dead` is set, `add` raises EngineDeadError and the callback given to
`on_death` is called once with the reason (the server's only news of the death: no polling).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from scheduler.config import SchedulerConfig, fit_to_executor
from scheduler.plan import Executor, StepPlan, StepRefusedError, StepResult
from scheduler.request import EngineDeadError, Request, RequestOutput
from scheduler.scheduler import SampledTokens, Scheduler
from scheduler.stats import SchedulerStats

T = TypeVar("T")
logger = logging.getLogger(__name__)

IDLE_RECHECK_S = 0.01  # wait bound while requests wait but nothing could be scheduled


def merge_outputs(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """One delta covering `a` then `b` (b is the later one: its totals and finish win)."""
    return dataclasses.replace(
        b, new_token_ids=[*a.new_token_ids, *b.new_token_ids],
        new_logprobs=_joined(a.new_logprobs, b.new_logprobs),
        new_top_logprobs=_joined(a.new_top_logprobs, b.new_top_logprobs))


def _joined(a: list[T] | None, b: list[T] | None) -> list[T] | None:
    """Per-token lists of two deltas, in order (None when neither has one)."""
    return None if a is None and b is None else [*(a or ()), *(b or ())]


class OutputSink(Protocol):
    """Where `_publish` hands one request's deltas: a RequestStream, or an IPC connection's
    per-step batch in the engine-core process (server/split/engine_core.py)."""

    def put(self, output: RequestOutput) -> None: ...


class RequestStream:
    """Async iterator of one request's RequestOutput deltas; ends after the finished one.

    A consumer that falls behind gets every delta queued since its last read merged into one
    (one detokenisation, one SSE event, one write per wake-up, however many steps it missed)."""

    def __init__(self, request_id: str, loop: EngineLoop) -> None:
        self.request_id = request_id
        self._loop = loop
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

    def put(self, output: RequestOutput) -> None:
        self._queue.put_nowait(output)

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        while True:
            out = await self._queue.get()
            while not out.finished and not self._queue.empty():
                out = merge_outputs(out, self._queue.get_nowait())
            yield out
            if out.finished:
                return

    def abort(self) -> None:
        self._loop.abort(self.request_id)


class EngineLoop:
    def __init__(self, executor: Executor, config: SchedulerConfig, eos_token_ids: Seq[int],
                 on_step: Callable[[SchedulerStats], None] | None = None) -> None:
        self._executor = executor
        self._scheduler = Scheduler(
            fit_to_executor(config, executor),
            block_size=executor.block_size, num_blocks=executor.num_blocks,
            vocab_size=executor.vocab_size, max_context=executor.max_context,
            eos_token_ids=eos_token_ids,
            device_sampling=bool(getattr(executor, "samples_on_device", False)))
        self._on_step = on_step
        self._streams: dict[str, OutputSink] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._dead: BaseException | None = None
        self._death_callback: Callable[[str], None] | None = None
        self._stopping = False
        self._stats = self._scheduler.stats()

    # ---- public API ----------
    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    @property
    def dead(self) -> BaseException | None:
        return self._dead

    @property
    def num_unfinished(self) -> int:
        return self._scheduler.num_unfinished

    def on_death(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once when the loop dies, after every request got its ERROR
        output (at once if it is already dead)."""
        self._death_callback = callback
        if self._dead is not None:
            callback(str(self._dead))

    def stats(self) -> SchedulerStats:
        return self._stats

    async def start(self) -> None:
        if self._task is not None:
            return
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtserve-step")
        self._task = asyncio.create_task(self._run(), name="trtserve-engine-loop")

    async def stop(self) -> None:
        """Stop stepping, abort whatever is left (each stream gets its ABORT), join the task."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        for request_id in self._scheduler.request_ids():
            self.abort(request_id)
        if self._threads is not None:
            self._threads.shutdown(wait=True)

    def add(self, request: Request) -> RequestStream:
        stream = RequestStream(request.request_id, self)
        self.add_to(request, stream)
        return stream

    def add_to(self, request: Request, sink: OutputSink) -> None:
        """`add` with the deltas handed to `sink.put` (same checks, same errors)."""
        if self._dead is not None:
            raise EngineDeadError(f"engine loop is dead: {self._dead}")
        if self._stopping:
            raise EngineDeadError("engine loop is stopping")
        self._scheduler.add(request)  # RequestError / QueueFullError propagate
        self._streams[request.request_id] = sink
        self._wake.set()

    def abort(self, request_id: str) -> None:
        out = self._scheduler.abort(request_id)
        if out is not None:
            self._publish([out], None)

    # ---- the task ----------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: list[RequestOutput] = []
        pending_stats: SchedulerStats | None = None
        try:
            while not self._stopping:
                self._wake.clear()
                plan = self._scheduler.schedule()
                pending += self._scheduler.drain_outputs()
                if plan is None:
                    self._publish(pending, pending_stats)
                    pending, pending_stats = [], None
                    await self._idle()
                    continue
                future = loop.run_in_executor(self._threads, self._execute_and_sample, plan)
                self._publish(pending, pending_stats)  # overlaps with the executor call
                try:
                    result, sampled, step_time = await future
                except StepRefusedError as exc:  # only this plan's requests fail
                    logger.error("executor refused step %d: %s", plan.step_id, exc)
                    error = f"{type(exc).__name__}: {exc}"
                    pending, pending_stats = self._scheduler.fail_step(plan, error), None
                    continue  # the previous step's stats went out before the await
                pending = self._scheduler.update(plan, result, sampled)
                pending_stats = self._scheduler.stats(step_time)
            self._publish(pending, pending_stats)
        except Exception as exc:  # the engine failed: fail every request, die loudly
            self._dead = exc
            logger.exception("engine loop died; failing %d requests", self.num_unfinished)
            error = f"{type(exc).__name__}: {exc}"
            self._publish(pending + self._scheduler.fail_all(error), None)
            self._announce_death(str(exc))

    def _announce_death(self, reason: str) -> None:
        if self._death_callback is None:
            return
        try:
            self._death_callback(reason)
        except Exception:
            logger.exception("on_death callback failed")

    def _execute_and_sample(self, plan: StepPlan) -> tuple[StepResult, SampledTokens, float]:
        """Worker thread: the forward pass, then sampling (pure w.r.t. the event loop's state)."""
        t0 = time.perf_counter()
        result = self._executor.execute(plan)
        step_time = time.perf_counter() - t0
        return result, self._scheduler.sample_step(plan, result), step_time

    async def _idle(self) -> None:
        if self._scheduler.has_work():  # e.g. queued requests waiting for a deadline check
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_RECHECK_S)
            except TimeoutError:
                pass
            return
        self._scheduler.check_integrity()
        self._publish([], self._scheduler.stats())  # on_step sees the idle snapshot (counts 0)
        await self._wake.wait()

    def _publish(self, outputs: list[RequestOutput], stats: SchedulerStats | None) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            stream.put(out)
            if out.finished:
                del self._streams[out.request_id]
        if stats is not None:
            self._stats = stats
            if self._on_step is not None:
                try:
                    self._on_step(stats)
                except Exception:
                    logger.exception("on_step callback failed (ignored)")
