"""EngineLoop: concurrent streams, abort mid-stream, engine failure, idle without spinning."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest
from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request

from scheduler.config import SchedulerConfig
from scheduler.loop import EngineLoop, RequestStream
from scheduler.plan import StepPlan, StepResult
from scheduler.request import EngineDeadError, ErrorKind, FinishReason, RequestOutput
from scheduler.stats import SchedulerStats


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def make_loop(ex: FakeExecutor, **config: object) -> tuple[EngineLoop, list[SchedulerStats]]:
    seen: list[SchedulerStats] = []
    loop = EngineLoop(ex, SchedulerConfig(**config), eos_token_ids=(),  # type: ignore[arg-type]
                      on_step=seen.append)
    return loop, seen


async def collect(stream: RequestStream) -> list[RequestOutput]:
    return [o async for o in stream]


def test_concurrent_requests_stream_reference_tokens() -> None:
    """Eight concurrent requests each stream exactly their solo greedy tokens, then finish;
    the pool is fully free afterwards and on_step saw every step."""
    async def main() -> None:
        ex = FakeExecutor(num_blocks=64)
        loop, seen = make_loop(ex, max_num_tokens=8)
        await loop.start()
        reqs = [make_request(3 + i, max_tokens=5 + i) for i in range(8)]
        streams = [loop.add(r) for r in reqs]
        results = await asyncio.gather(*(collect(s) for s in streams))
        for r, outs in zip(reqs, results, strict=True):
            assert [t for o in outs for t in o.new_token_ids] == greedy_reference(
                r.prompt_token_ids, r.params.max_tokens)
            assert outs[-1].finished and outs[-1].finish_reason == FinishReason.LENGTH
        loop.scheduler.check_integrity()
        assert loop.num_unfinished == 0 and loop.scheduler.allocator.num_free == 64
        assert seen[-1].blocks_used == 0 and seen[-1].requests_completed_total == 8
        steps = [s for s in seen if s.step_time_s > 0]  # the rest: idle snapshots
        assert [s.step_id for s in steps] == list(range(1, len(ex.plans) + 1))
        assert seen[-1].num_scheduled_tokens == seen[-1].num_generation_requests == 0
        await loop.stop()
    run(main())


def test_abort_mid_stream_frees_blocks() -> None:
    """Aborting a stream after its first token ends it with ABORT and frees its KV."""
    async def main() -> None:
        ex = FakeExecutor(num_blocks=64)
        loop, _ = make_loop(ex)
        await loop.start()
        stream = loop.add(make_request(6, max_tokens=200))
        outs = []
        async for out in stream:
            outs.append(out)
            if len(outs) == 2:
                stream.abort()
                stream.abort()  # idempotent
        assert outs[-1].finish_reason == FinishReason.ABORT and len(outs) == 3
        assert loop.num_unfinished == 0
        loop.scheduler.check_integrity()
        assert loop.scheduler.allocator.num_free == 64
        await loop.stop()
    run(main())


def test_engine_exception_fails_everyone_and_kills_loop() -> None:
    """When execute raises, every in-flight and waiting request gets a final ERROR output with
    the message; `dead` is set and add raises EngineDeadError."""
    async def main() -> None:
        ex = FakeExecutor(num_blocks=64, fail_at_step=3)
        loop, _ = make_loop(ex, max_batch_size=2)
        await loop.start()
        streams = [loop.add(make_request(4, max_tokens=50)) for _ in range(4)]
        results = await asyncio.gather(*(collect(s) for s in streams))
        for outs in results:
            last = outs[-1]
            assert (last.finished, last.finish_reason, last.error, last.error_type) == (
                True, FinishReason.ERROR, "RuntimeError: fake device failure", ErrorKind.ENGINE)
        assert isinstance(loop.dead, RuntimeError)
        with pytest.raises(EngineDeadError, match="fake device failure"):
            loop.add(make_request())
        assert loop.scheduler.allocator.num_free == 64
        await loop.stop()
    run(main())


class BlockingExecutor(FakeExecutor):
    """Blocks inside execute until released, to prove the event loop keeps running."""

    def __init__(self) -> None:
        super().__init__(num_blocks=32)
        self.release = threading.Event()
        self.entered = threading.Event()

    def execute(self, plan: StepPlan) -> StepResult:
        self.entered.set()
        self.release.wait(10)
        return super().execute(plan)


def test_event_loop_not_stalled_by_execute() -> None:
    """While execute blocks in the worker thread, other coroutines run, and the loop idles on
    an Event (no steps) once work is done; stop() aborts leftovers."""
    async def main() -> None:
        ex = BlockingExecutor()
        loop, _ = make_loop(ex)
        await loop.start()
        stream = loop.add(make_request(4, max_tokens=2))
        await asyncio.to_thread(ex.entered.wait, 5)
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 5 and not ex.release.is_set()
        ex.release.set()
        outs = await collect(stream)
        assert outs[-1].finish_reason == FinishReason.LENGTH
        steps = len(ex.plans)
        await asyncio.sleep(0.05)
        assert len(ex.plans) == steps  # idle: no spinning steps
        waiting = loop.add(make_request(4, max_tokens=100))
        await loop.stop()
        assert (await collect(waiting))[-1].finish_reason == FinishReason.ABORT
    run(main())


def test_sampling_runs_in_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scheduler.sample_step is called from the loop's worker thread, never the event loop's."""
    from scheduler.scheduler import Scheduler
    names: list[str] = []
    original = Scheduler.sample_step

    def spy(self: Scheduler, plan: StepPlan, result: StepResult) -> Any:
        names.append(threading.current_thread().name)
        return original(self, plan, result)

    monkeypatch.setattr(Scheduler, "sample_step", spy)

    async def main() -> None:
        loop, _ = make_loop(FakeExecutor(num_blocks=32))
        await loop.start()
        outs = await collect(loop.add(make_request(4, max_tokens=3)))
        assert outs[-1].num_output_tokens == 3
        await loop.stop()
    run(main())
    assert len(names) == 3 and all(n.startswith("trtserve-step") for n in names)


def test_a_refused_step_does_not_republish_the_previous_steps_stats() -> None:
    """The stats of step N are handed to on_step once: when step N+1 is refused, the loop must
    not publish N's snapshot a second time (the metrics would count its tokens twice)."""
    from scheduler.plan import StepRefusedError

    class RefusesThirdStep(FakeExecutor):
        def execute(self, plan: StepPlan) -> StepResult:
            if plan.step_id == 3:
                raise StepRefusedError("step 3 refused (test)")
            return super().execute(plan)

    async def main() -> list[RequestOutput]:
        loop, seen = make_loop(RefusesThirdStep(num_blocks=32))
        await loop.start()
        try:
            outs = [o async for o in loop.add(make_request(6, max_tokens=8))]
        finally:
            await loop.stop()
        busy = [s for s in seen if s.step_time_s > 0]
        assert len(busy) == len({id(s) for s in busy}), [s.step_id for s in busy]
        return outs

    outs = run(main())
    assert outs[-1].finish_reason is FinishReason.ERROR
    assert outs[-1].error_type is ErrorKind.STEP_REFUSED
