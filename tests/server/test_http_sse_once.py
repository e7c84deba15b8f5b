"""Issue 13 (one SSE, text once, validation once) over the real app + real EngineLoop with a
fake executor speaking a script (tests/fakes.py): both streaming families answer a queue timeout with a 503
JSON error; a bad sampling parameter is a 400 however busy the server is; a stop string that
spans tokens ends the request there, in the engine too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, serving

from scheduler.loop import EngineLoop

SCRIPT = "Hello world! STOP here. The end."
MESSAGES = [{"role": "user", "content": "a"}]
TRITON_STREAM = "/v2/models/ensemble/generate_stream"


@dataclass
class _Model:
    """The real loop over a fake executor speaking SCRIPT, with the server's batch limits."""

    engine: FakeEngine
    max_batch_size: int
    max_queue_size: int

    @property
    def loop(self) -> EngineLoop:
        assert self.engine.loop is not None, "the app has not loaded it yet"
        return self.engine.loop


def _model(step_s: float, max_batch_size: int, max_queue_size: int) -> _Model:
    return _Model(FakeEngine(SCRIPT, step_s=step_s), max_batch_size, max_queue_size)


def _serve(model: _Model, **settings: Any) -> Any:
    return serving(model.engine, max_batch_size=model.max_batch_size,
                   max_queue_size=model.max_queue_size, **settings)


def _run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 30))


async def _fill(client: httpx.AsyncClient, loop: Any, n: int) -> list[asyncio.Task[Any]]:
    """n long requests in flight, one at a time (the first one running before the next one
    queues, so the scheduler's own queue bound is not met early)."""
    body = {"text_input": "a", "max_tokens": 200}
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(client.post("/v2/models/ensemble/generate", json=body)))
        while loop.num_unfinished <= i or not loop.scheduler.admission.running:
            await asyncio.sleep(0.005)
    return tasks


async def _drain(loop: Any, tasks: list[asyncio.Task[Any]]) -> None:
    for rid in loop.scheduler.request_ids():
        loop.abort(rid)
    await asyncio.gather(*tasks)


STREAMS = [  # (path, body) of a streaming request in each family
    (TRITON_STREAM, {"text_input": "a", "max_tokens": 4, "stream": True}),
    ("/v1/completions", {"model": "fake-model", "prompt": "a", "max_tokens": 4, "stream": True}),
    ("/v1/chat/completions", {"model": "fake-model", "messages": MESSAGES, "max_tokens": 4,
                              "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), STREAMS)
def test_streaming_queue_timeout_is_a_503_json_error(path: str, body: dict[str, Any]) -> None:
    """The only batch slot is taken: a streaming request times out in the queue and gets a 503
    with a JSON error body (Triton's shape or OpenAI's), not a 200 with an error event. (The
    timeout aborts the filler too, but its 0.5 s step is still running past the queued
    request's deadline.)"""
    model = _model(step_s=0.5, max_batch_size=1, max_queue_size=4)

    async def main() -> httpx.Response:
        async with _serve(model, request_timeout=0.3) as (_, client):
            tasks = await _fill(client, model.loop, 1)
            r = await client.post(path, json=body)
            await _drain(model.loop, tasks)
            return r

    r = _run(main)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["retry-after"]
    error = r.json()["error"]
    message = error if path == TRITON_STREAM else error["message"]
    assert "timeout" in message
    if path != TRITON_STREAM:
        assert error["type"] == "server_error" and error["code"] == 503


BAD = [  # a sampling parameter out of the scheduler's bounds, in each route
    ("/v2/models/ensemble/generate", {"text_input": "a", "max_tokens": 4, "top_p": 1.5}),
    (TRITON_STREAM, {"text_input": "a", "max_tokens": 4, "temperature": 2.5, "top_k": 5}),
    ("/v1/completions", {"model": "fake-model", "prompt": "a", "temperature": 2.5}),
    ("/v1/completions", {"model": "fake-model", "prompt": "a", "top_p": 0.0, "stream": True}),
    ("/v1/chat/completions", {"model": "fake-model", "messages": MESSAGES, "max_tokens": 0}),
]


def test_bad_parameters_are_400_on_a_full_server() -> None:
    """Batch and queue full (a good request gets 503): a bad parameter is still a 400."""
    model = _model(step_s=0.02, max_batch_size=1, max_queue_size=2)

    async def main() -> list[httpx.Response]:
        async with _serve(model) as (_, client):
            tasks = await _fill(client, model.loop, 3)
            good = await client.post("/v1/completions", json={"model": "fake-model",
                                                              "prompt": "a"})
            answers = [await client.post(path, json=body) for path, body in BAD]
            await _drain(model.loop, tasks)
            return [good, *answers]

    good, *answers = _run(main)
    assert good.status_code == 503, good.text
    for (path, _), r in zip(BAD, answers, strict=True):
        assert r.status_code == 400, (path, r.status_code, r.text)


STOPPED = [  # (path, body, the text it gets, where the token count is)
    ("/v2/models/ensemble/generate",
     {"text_input": "a", "max_tokens": 30, "stop_words": ["STOP"], "return_num_output_tokens":
      True, "exclude_input_in_output": True}, "Hello world! STOP", "num_output_tokens"),
    ("/v1/completions", {"model": "fake-model", "prompt": "a", "max_tokens": 30,
                         "stop": ["STOP"]}, "Hello world! ", "usage"),
]


@pytest.mark.parametrize(("path", "body", "text", "count"), STOPPED)
def test_stop_string_across_tokens_ends_the_request_in_the_engine(
        path: str, body: dict[str, Any], text: str, count: str) -> None:
    """"STOP" is four tokens: the request ends on the last one (17 tokens, not 30), its text is
    the one matched on, and the engine holds nothing of it afterwards (slow steps: the abort
    reaches the engine while it would still be generating)."""
    model = _model(step_s=0.01, max_batch_size=4, max_queue_size=4)

    async def main() -> tuple[httpx.Response, int, int]:
        async with _serve(model) as (_, client):
            r = await client.post(path, json=body)
            for _ in range(100):
                stats = model.loop.stats()
                if model.loop.num_unfinished == 0 and stats.blocks_used == 0:
                    break
                await asyncio.sleep(0.01)
            return r, model.loop.num_unfinished, model.loop.stats().blocks_used

    r, unfinished, blocks_used = _run(main)
    assert r.status_code == 200, r.text
    data = r.json()
    if count == "usage":
        choice = data["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (text, "stop")
        assert data["usage"]["completion_tokens"] == len("Hello world! STOP")
    else:
        assert data["text_output"] == text and data[count] == len("Hello world! STOP")
    assert (unfinished, blocks_used) == (0, 0)
