"""A request's life over real HTTP: the `serve` runner on a port, the real EngineLoop + Scheduler
over a scripted executor. Every ending (the client going away, engine death, the last output)
goes through the request's one owner, once: one abort at most, blocks freed, one record with the
right outcome in the metrics, the in-flight gauge back to 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fakes import FakeEngine

from scheduler.request import ErrorKind
from server.cli.serve import serve
from server.request.outcome import ENDINGS, Outcome, error_outcome
from server.serving import ServingModel
from server.settings import ServerSettings

STREAM = "/v2/models/ensemble/generate_stream"
LONG = {"text_input": "a", "max_tokens": 500, "stream": True}


def _engine(**executor_options: Any) -> FakeEngine:
    """The real EngineLoop + Scheduler over a fake executor that says "hello" then filler."""
    return FakeEngine(b"hello", num_blocks=256, max_context=1024, step_s=0.01, **executor_options)


@dataclass
class _Served:
    client: httpx.AsyncClient
    model: ServingModel
    task: asyncio.Task[int]
    aborts: Counter[str]  # engine loop aborts per request id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count_aborts(model: ServingModel) -> Counter[str]:
    calls: Counter[str] = Counter()
    abort = model.loop.abort

    def counting(request_id: str) -> None:
        calls[request_id] += 1
        abort(request_id)

    model.loop.abort = counting  # type: ignore[method-assign]
    return calls


@contextlib.asynccontextmanager
async def _served(engine: FakeEngine) -> AsyncIterator[_Served]:
    settings = ServerSettings(model="fake-model", host="127.0.0.1", port=_free_port(),
                              metrics_port=0, log_level="warning")
    models: list[ServingModel] = []

    async def load(s: object, metrics: Any) -> ServingModel:
        model = await engine(s, metrics)  # type: ignore[arg-type]
        models.append(model)
        return model

    task = asyncio.create_task(serve(settings, load))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as c:
        for _ in range(250):
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get("/v2/health/ready")).status_code == 200:
                    break
            await asyncio.sleep(0.02)
        try:
            yield _Served(c, models[0], task, _count_aborts(models[0]))
        finally:
            if not task.done():
                os.kill(os.getpid(), signal.SIGTERM)  # the server's drain-and-exit path
            await asyncio.wait_for(task, 20)


async def _metric(srv: _Served, name: str, **labels: str) -> float:
    text = (await srv.client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    raise AssertionError(f"{name} {labels} not in /metrics")


async def _idle_stats(srv: _Served) -> dict[str, Any]:
    """/v2/trtserve/stats once no request is live and the scheduler runs nothing."""
    deadline = time.monotonic() + 10
    while True:
        s: dict[str, Any] = (await srv.client.get("/v2/trtserve/stats")).json()
        if s["active_requests"] == 0 and s["scheduler"]["num_running"] == 0:
            return s
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.02)


async def _outcomes(srv: _Served) -> tuple[float, float, float]:
    """(successes, CANCELED failures, in-flight) of model ensemble."""
    return (await _metric(srv, "nv_inference_request_success", model="ensemble"),
            await _metric(srv, "nv_inference_request_failure", model="ensemble",
                          reason="CANCELED"),
            await _metric(srv, "trtserve_requests_in_flight", model="ensemble"))


async def _canceled_once(srv: _Served) -> None:
    """One request, aborted once, its blocks back, counted CANCELED (not a success)."""
    stats = await _idle_stats(srv)
    assert stats["scheduler"]["blocks_used"] == 0, stats
    assert list(srv.aborts.values()) == [1]
    assert await _outcomes(srv) == (0, 1, 0)


def test_dropped_stream_is_aborted_once_frees_blocks_and_counts_canceled() -> None:
    async def main() -> None:
        async with _served(_engine()) as srv:
            async with srv.client.stream("POST", STREAM, json=LONG) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break
                assert await _metric(srv, "trtserve_requests_in_flight", model="ensemble") == 1
            await _canceled_once(srv)

    asyncio.run(main())


def test_non_stream_client_that_gives_up_is_canceled_not_a_success() -> None:
    async def main() -> None:
        async with _served(_engine()) as srv:
            with pytest.raises(httpx.ReadTimeout):
                await srv.client.post("/v2/models/ensemble/generate",
                                      json=dict(LONG, stream=False), timeout=0.3)
            await _canceled_once(srv)

    asyncio.run(main())


def test_engine_death_ends_every_live_request_once_and_readiness_503_at_once() -> None:
    async def main() -> None:
        async with _served(_engine(fail_at_step=8)) as srv:
            streams = [srv.client.post(STREAM, json=LONG) for _ in range(2)]
            whole = srv.client.post("/v2/models/ensemble/generate", json=dict(LONG, stream=False))
            *sse, plain = await asyncio.gather(*streams, whole)
            for r in sse:
                assert r.status_code == 200
                assert "fake device failure" in r.text.strip().splitlines()[-1]
            assert plain.status_code == 500 and "fake device failure" in plain.json()["error"]
            # no poll, no probe with a side effect: the loop pushed its death before the last
            # outputs reached anyone
            assert (await srv.client.get("/v2/health/live")).status_code == 503
            assert (await srv.client.get("/v2/health/ready")).status_code == 503
            r = await srv.client.post("/v2/models/ensemble/generate", json=LONG)
            assert r.status_code == 503 and "engine is dead" in r.json()["error"]
            assert await _metric(srv, "nv_inference_request_failure", model="ensemble",
                                 reason="BACKEND") == 3
            assert await _outcomes(srv) == (0, 0, 0)
            assert not srv.aborts  # they ended with their ERROR output: nothing to abort
            assert await asyncio.wait_for(srv.task, 10) == 1

    asyncio.run(main())


def test_every_outcome_has_one_ending_and_every_error_kind_an_outcome() -> None:
    assert set(ENDINGS) == set(Outcome)
    assert ENDINGS[Outcome.FINISHED].failure_reason is None
    assert all(e.failure_reason for o, e in ENDINGS.items() if o is not Outcome.FINISHED)
    ends = {kind: ENDINGS[error_outcome(kind)] for kind in ErrorKind}
    assert (ends[ErrorKind.QUEUE_TIMEOUT].status,
            ends[ErrorKind.QUEUE_TIMEOUT].failure_reason) == (503, "REJECTED")  # docs/metrics.md
    assert (ends[ErrorKind.INVALID].status, ends[ErrorKind.ENGINE_DEAD].status) == (400, 503)
    assert (ends[ErrorKind.STEP_REFUSED].status, ends[ErrorKind.ENGINE].failure_reason) == (
        500, "BACKEND")
