"""Load generation: closed loop (fixed concurrency) and open loop (seeded Poisson arrivals)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence

import httpx

from loadgen.client import Endpoint, RequestResult, send_request
from loadgen.dataset import BenchPrompt

logger = logging.getLogger(__name__)

OnDone = Callable[[RequestResult], None]


def poisson_schedule(num: int, rate: float, seed: int) -> list[float]:
    """Send times (seconds from the run start) of `num` requests arriving at `rate` req/s.

    Inter-arrival gaps are exponential with mean 1/rate, drawn from a generator seeded with
    `seed`, so the same arguments always give the same schedule. The first request goes at
    0; `rate=inf` sends everything at once.
    """
    if math.isinf(rate):
        return [0.0] * num
    rng = random.Random(seed)
    times, t = [], 0.0
    for i in range(num):
        if i:
            t += rng.expovariate(rate)
        times.append(t)
    return times


def make_client(base_url: str, max_connections: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits,
                             timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))


async def run_closed_loop(client: httpx.AsyncClient, endpoint: Endpoint,
                          prompts: Sequence[BenchPrompt], concurrency: int, timeout_s: float,
                          on_done: OnDone | None = None) -> list[RequestResult]:
    """`concurrency` workers, each sending its next prompt as soon as the last one ends."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        queue.put_nowait(i)
    results: list[RequestResult] = []

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await send_request(client, endpoint, prompts[i], i, timeout_s)
            results.append(result)
            if on_done is not None:
                on_done(result)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    return sorted(results, key=lambda r: r.index)


async def run_open_loop(client: httpx.AsyncClient, endpoint: Endpoint,
                        prompts: Sequence[BenchPrompt], rate: float, seed: int,
                        timeout_s: float, on_done: OnDone | None = None) -> list[RequestResult]:
    """Send prompt i at schedule[i] whatever the number in flight (arrivals don't wait)."""
    return await send_on_schedule(client, endpoint, prompts,
                                  poisson_schedule(len(prompts), rate, seed),
                                  time.perf_counter(), timeout_s, on_done)


async def send_on_schedule(client: httpx.AsyncClient, endpoint: Endpoint,
                           prompts: Sequence[BenchPrompt], send_at: Sequence[float],
                           start: float, timeout_s: float,
                           on_done: OnDone | None = None) -> list[RequestResult]:
    """Send prompt i at perf_counter `start + send_at[i]` (a client process sends its share of
    one schedule against the run's common start)."""

    async def one(i: int) -> RequestResult:
        delay = start + send_at[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result = await send_request(client, endpoint, prompts[i], i, timeout_s)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))


async def run_once(base_url: str, endpoint: Endpoint, prompts: Sequence[BenchPrompt],
                   mode: str, value: float, seed: int, timeout_s: float,
                   on_done: OnDone | None = None) -> tuple[list[RequestResult], float]:
    """One run at one sweep value; returns the results and the wall time in seconds."""
    max_conn = int(value) if mode == "concurrency" else len(prompts)
    async with make_client(base_url, max(1, max_conn), timeout_s) as client:
        t0 = time.perf_counter()
        if mode == "concurrency":
            results = await run_closed_loop(client, endpoint, prompts, int(value), timeout_s,
                                            on_done)
        else:
            results = await run_open_loop(client, endpoint, prompts, value, seed, timeout_s,
                                          on_done)
        duration = time.perf_counter() - t0
    logger.debug("run %s=%s: %d requests in %.2fs", mode, value, len(results), duration)
    return results, duration
