"""One client process of a multi-process run: its share of the streams, on its own event loop.

The parent (loadgen/procs.py) talks to it over one pipe. The worker sends ("ready",) once its
HTTP client exists, waits for ("go", start) (a perf_counter instant shared by all workers, which
is CLOCK_MONOTONIC and so one clock for every process of the machine), sends its share, and
reports: ("results", [RequestResult, ...]) every REPORT_S (an empty list is a heartbeat), then
("done", end) with the perf_counter instant its last request ended. Any failure of its own is
sent as ("error", message); a lost parent (broken pipe) ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

from loadgen.client import RequestResult, make_endpoint
from loadgen.generator import make_client, run_closed_loop, send_on_schedule
from loadgen.split import Share

logger = logging.getLogger(__name__)

REPORT_S = 0.5  # results and heartbeat interval
GO_TIMEOUT_S = 300.0  # a worker left waiting this long for "go" gives up


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """What one client process sends, and where."""

    url: str
    endpoint: str       # loadgen.config.ENDPOINTS
    model: str
    share: Share
    timeout_s: float    # per request
    extra_body: str = ""  # JSON object added to every request body


def worker_main(conn: Connection, job: WorkerJob) -> None:
    """Process entry point (spawned): run the share, report over `conn`, never raise."""
    try:
        asyncio.run(_run(conn, job))
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the parent is gone or gave up on us: nobody to report to
    except BaseException as exc:  # noqa: BLE001 - everything goes to the parent
        _send_quietly(conn, ("error", "".join(traceback.format_exception_only(exc)).strip()))
    finally:
        conn.close()


def _send_quietly(conn: Connection, msg: tuple[object, ...]) -> None:
    try:
        conn.send(msg)
    except (OSError, EOFError):
        pass


def _wait_go(conn: Connection) -> float:
    if not conn.poll(GO_TIMEOUT_S):
        raise TimeoutError(f"no start signal from the parent in {GO_TIMEOUT_S:g}s")
    msg = conn.recv()
    if msg[0] != "go":
        raise RuntimeError(f"expected 'go' from the parent, got {msg[0]!r}")
    return float(msg[1])


async def _report(conn: Connection, outbox: list[RequestResult]) -> None:
    while True:
        await asyncio.sleep(REPORT_S)
        batch = outbox[:]
        outbox.clear()
        conn.send(("results", batch))


async def _run(conn: Connection, job: WorkerJob) -> None:
    share = job.share
    endpoint = make_endpoint(job.endpoint, job.model, job.extra_body)
    outbox: list[RequestResult] = []

    def on_done(result: RequestResult) -> None:
        result.index = share.indices[result.index]  # the run's numbering, not the share's
        outbox.append(result)

    async with make_client(job.url, max(1, share.concurrency or len(share.prompts)),
                           job.timeout_s) as client:
        conn.send(("ready",))
        start = _wait_go(conn)
        reporter = asyncio.create_task(_report(conn, outbox))
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        if share.concurrency:
            await run_closed_loop(client, endpoint, share.prompts, share.concurrency,
                                  job.timeout_s, on_done)
        else:
            await send_on_schedule(client, endpoint, share.prompts, share.send_at, start,
                                   job.timeout_s, on_done)
        end = time.perf_counter()
        reporter.cancel()
    conn.send(("results", outbox))
    conn.send(("done", end))
