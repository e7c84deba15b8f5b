"""A stream consumer that falls behind gets the queued deltas merged into one: every token and
log-prob in order, the later delta's totals and finish, nothing merged past the final delta."""

from __future__ import annotations

import asyncio

from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request

from scheduler.config import SchedulerConfig
from scheduler.loop import EngineLoop, merge_outputs
from scheduler.request import FinishReason, RequestOutput


def test_merge_outputs_concatenates_and_keeps_the_later_state() -> None:
    a = RequestOutput("r", [1, 2], [-0.1, -0.2], num_prompt_tokens=5, num_output_tokens=2)
    b = RequestOutput("r", [3], [-0.3], True, FinishReason.LENGTH, 5, 3, num_cached_tokens=4)
    m = merge_outputs(a, b)
    assert (m.new_token_ids, m.new_logprobs) == ([1, 2, 3], [-0.1, -0.2, -0.3])
    assert (m.finished, m.finish_reason, m.num_output_tokens, m.num_cached_tokens) == \
        (True, FinishReason.LENGTH, 3, 4)
    assert merge_outputs(RequestOutput("r", [1]), RequestOutput("r", [2])).new_logprobs is None



def test_merge_outputs_keeps_every_per_token_field() -> None:
    """top_logprobs ride along with their tokens: a merge that dropped them would pair the
    later tokens with nothing (or the earlier tokens' candidates)."""
    a = RequestOutput("r", [1], [-0.1], new_top_logprobs=[((1, -0.1), (7, -2.0))])
    b = RequestOutput("r", [3], [-0.3], new_top_logprobs=[((3, -0.3), (8, -1.5))])
    m = merge_outputs(a, b)
    assert m.new_top_logprobs == [((1, -0.1), (7, -2.0)), ((3, -0.3), (8, -1.5))]
    assert merge_outputs(RequestOutput("r", [1]), RequestOutput("r", [2])).new_top_logprobs is None
    per_token = [f for f in RequestOutput.__dataclass_fields__ if f.startswith("new_")]
    assert sorted(per_token) == ["new_logprobs", "new_token_ids", "new_top_logprobs"], \
        "a new per-token field must be joined in merge_outputs too"

def test_slow_consumer_gets_fewer_deltas_with_every_token() -> None:
    async def main() -> tuple[list[RequestOutput], list[RequestOutput]]:
        ex = FakeExecutor(num_blocks=64, with_argmax=True)
        loop = EngineLoop(ex, SchedulerConfig(), eos_token_ids=())
        await loop.start()
        try:
            fast, slow = [], []
            prompt = [3, 10, 17, 24, 31, 38]
            req_a = make_request(prompt, max_tokens=24, min_tokens=24, logprobs=True)
            req_b = make_request(prompt, max_tokens=24, min_tokens=24, logprobs=True)

            async def consume(stream: object, sink: list[RequestOutput], pause: float) -> None:
                async for out in stream:  # type: ignore[attr-defined]
                    sink.append(out)
                    await asyncio.sleep(pause)

            await asyncio.gather(consume(loop.add(req_a), fast, 0.0),
                                 consume(loop.add(req_b), slow, 0.01))
            return fast, slow
        finally:
            await loop.stop()

    fast, slow = asyncio.run(main())
    want = greedy_reference([3, 10, 17, 24, 31, 38], 24)
    for outs in (fast, slow):
        assert [t for o in outs for t in o.new_token_ids] == want
        assert sum(len(o.new_logprobs or []) for o in outs) == 24
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        assert outs[-1].num_output_tokens == 24
    assert len(slow) < len(fast)
