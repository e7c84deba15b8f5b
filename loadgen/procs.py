"""One run spread over client processes (`trtserve bench --client-procs N`).

One asyncio loop parsing hundreds of SSE streams runs out of core before a fast server does, and
then the requests go out late and the report measures the client. Here each process (spawned:
no inherited threads or loops) runs the usual closed- or open-loop runner on its share of the
run (loadgen/split.py), and the parent merges the records; the report is computed from them
exactly as for one process.

Start-up is not measured: the parent waits until every worker is ready (imported, client built),
then releases them together with one start instant. The wall time runs from that instant to the
last request's end. Every step has a limit: a worker that dies, reports an error, is not ready
within STARTUP_S or goes silent for SILENCE_S (it sends a heartbeat every REPORT_S) ends the run
with ClientProcsError, and all workers are stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from loadgen.client import RequestResult
from loadgen.split import Share
from loadgen.worker import WorkerJob, worker_main

logger = logging.getLogger(__name__)

STARTUP_S = 120.0   # spawn + imports + client, per run, on a loaded machine
SILENCE_S = 30.0    # no heartbeat for this long: the worker is hung
GO_DELAY_S = 0.05   # start instant = now + this, so every worker gets "go" before it
_JOIN_S = 5.0


class ClientProcsError(RuntimeError):
    """A client process failed; the run's numbers would be wrong, so there are none."""


@dataclass(slots=True)
class _Worker:
    rank: int
    proc: BaseProcess
    conn: Connection
    heard: float = field(default_factory=time.monotonic)
    ready: bool = False
    end: float | None = None

    def name(self) -> str:
        return f"client process {self.rank} (pid {self.proc.pid})"


def run_in_procs(url: str, endpoint: str, model: str, shares: Sequence[Share],
                 timeout_s: float, on_done: Callable[[RequestResult], None] | None = None,
                 extra_body: str = "") -> tuple[list[RequestResult], float]:
    """The results of all shares (in prompt order) and the run's wall time in seconds."""
    ctx = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    try:
        for rank, share in enumerate(shares):
            workers.append(_start(ctx, rank, WorkerJob(url, endpoint, model, share, timeout_s,
                                                           extra_body)))
        _pump(workers, lambda: all(w.ready for w in workers), STARTUP_S, [], on_done)
        start = time.perf_counter() + GO_DELAY_S
        for w in workers:
            w.conn.send(("go", start))
        results: list[RequestResult] = []
        _pump(workers, lambda: all(w.end is not None for w in workers), None, results, on_done)
    finally:
        _stop(workers)
    end = max(w.end for w in workers if w.end is not None)
    return sorted(results, key=lambda r: r.index), end - start


def _start(ctx: Any, rank: int, job: WorkerJob) -> _Worker:
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=worker_main, args=(child, job), name=f"loadgen-client-{rank}",
                       daemon=True)
    proc.start()
    child.close()
    return _Worker(rank, proc, parent)


def _pump(workers: list[_Worker], finished: Callable[[], bool], limit_s: float | None,
          results: list[RequestResult], on_done: Callable[[RequestResult], None] | None) -> None:
    """Read messages until `finished()`; raise ClientProcsError on any failure or limit."""
    deadline = None if limit_s is None else time.monotonic() + limit_s
    while not finished():
        live = [w for w in workers if w.end is None]
        ready = wait([w.conn for w in live], timeout=min(1.0, SILENCE_S))
        for w in live:
            if w.conn in ready:
                _drain(w, results, on_done)
        now = time.monotonic()
        for w in live:
            if w.ready and w.end is None and now - w.heard > SILENCE_S:
                raise ClientProcsError(f"{w.name()} sent nothing for {SILENCE_S:g}s (hung)")
        if deadline is not None and now > deadline and not finished():
            late = ", ".join(w.name() for w in workers if not w.ready)
            raise ClientProcsError(f"{late}: not ready within {limit_s:g}s")


def _drain(w: _Worker, results: list[RequestResult],
           on_done: Callable[[RequestResult], None] | None) -> None:
    while w.end is None and w.conn.poll():
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(_JOIN_S)
            raise ClientProcsError(f"{w.name()} exited (code {w.proc.exitcode}) before "
                                   "reporting all its results") from None
        w.heard = time.monotonic()
        _handle(w, msg, results, on_done)


def _handle(w: _Worker, msg: tuple[Any, ...], results: list[RequestResult],
            on_done: Callable[[RequestResult], None] | None) -> None:
    kind = msg[0]
    if kind == "ready":
        w.ready = True
    elif kind == "results":
        results.extend(msg[1])
        for r in msg[1] if on_done is not None else ():
            on_done(r)
    elif kind == "done":
        w.end = float(msg[1])
    elif kind == "error":
        raise ClientProcsError(f"{w.name()} failed: {msg[1]}")
    else:
        raise ClientProcsError(f"{w.name()} sent an unknown message {kind!r}")


def _stop(workers: list[_Worker]) -> None:
    """Join finished workers; kill the others (a hung one may be stopped, deaf to SIGTERM;
    a worker holds nothing worth a clean exit). Never waits unbounded."""
    for w in workers:
        w.proc.join(_JOIN_S if w.end is not None else 0)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(_JOIN_S)
        w.conn.close()
