"""The engine-core process of `--api-server-count N`: EngineLoop + Scheduler + executor, served
to the HTTP front-end processes over the IPC socket (server/split/frames.py).

It loads the model with the same loader as the one-process server, then answers each front
end's adds and aborts, and sends it one frame per engine step carrying every output of that step
for that front end plus the step's SchedulerStats. It owns every metric: front ends forward the
record of each ended request and their count of live requests per model (the in-flight gauge is
their sum), and a /metrics scrape in any front end is answered here, so every process shows the
same totals. A front end that disconnects has its requests aborted
(their KV blocks freed). SIGUSR1 (sent by the supervisor once the front ends drained): stop the
loop, exit 0; SIGTERM/SIGINT are ignored (the supervisor drains the front ends first). Engine
death (the loop's `on_death` callback): every front end is told, exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections import Counter
from typing import Any

from scheduler.request import ErrorKind, Request, RequestOutput, error_kind
from scheduler.stats import SchedulerStats
from server.app import Loader, default_metrics, stop_model
from server.split.frames import (
    EngineInfo,
    FrameWriter,
    OutputTuple,
    error_output,
    output_tuple,
    read_frame,
)
from server.metrics.server_metrics import ServerMetrics
from server.serving import ServingModel
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

STOP_SIGNAL = signal.SIGUSR1  # from the supervisor, once the front ends drained
DEAD_NOTICE_S = 0.5  # the "dead" message gets this long to reach the front ends before exit


class _Connection:
    """One front end: its live request ids and the outputs of the current step (OutputSink)."""

    def __init__(self, core: EngineCore, writer: asyncio.StreamWriter) -> None:
        self.core = core
        self.out = FrameWriter(writer)
        self.live: set[str] = set()
        self.in_flight: Counter[str] = Counter()  # its registry's live requests per model
        self.outputs: list[OutputTuple] = []
        self.sent_stats: SchedulerStats | None = None

    def put(self, output: RequestOutput) -> None:
        self.outputs.append(output_tuple(output))
        if output.finished:
            self.live.discard(output.request_id)
        self.core.mark(self)


class _StepMetrics(ServerMetrics):
    """The engine's registry; each step's stats also go to the front ends."""

    core: EngineCore | None = None

    def observe_step(self, stats: SchedulerStats) -> None:
        super().observe_step(stats)
        if self.core is not None:
            self.core.mark_all()


class EngineCore:
    def __init__(self, settings: ServerSettings, loader: Loader) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = default_metrics(settings, _StepMetrics)
        self.metrics.core = self  # type: ignore[attr-defined]
        self.model: ServingModel | None = None
        self.info: EngineInfo | None = None
        self.conns: set[_Connection] = set()
        self._dirty: set[_Connection] = set()
        self._scheduled = False
        self._stop = asyncio.Event()
        self._death: str | None = None  # why the engine loop died

    # ---- per-step batching ------------------------------------------------------------
    def mark(self, conn: _Connection) -> None:
        self._dirty.add(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def mark_all(self) -> None:
        for conn in self.conns:
            self.mark(conn)

    def _flush(self) -> None:
        self._scheduled = False
        model, dirty, self._dirty = self.model, self._dirty, set()
        if model is None:
            return
        stats, unfinished = model.loop.stats(), model.loop.num_unfinished
        for conn in dirty:
            fresh = None if stats is conn.sent_stats else stats
            conn.sent_stats = stats
            conn.out.send(("step", conn.outputs, fresh, unfinished))
            conn.outputs = []
            conn.out.flush()

    # ---- messages from a front end -------------------------------------------------------
    def _handle(self, conn: _Connection, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "add":
            self._add(conn, msg[1])
        elif kind == "abort":
            if self.model is not None and msg[1] in conn.live:
                self.model.loop.abort(msg[1])
        elif kind == "in_flight":
            conn.in_flight[msg[1]] = msg[2]
            self._sum_in_flight(msg[1])
        elif kind == "finished":
            self.metrics.request_finished(msg[1])
        elif kind == "metrics":
            conn.out.send(("reply", msg[1], self.metrics.exposition()))
            conn.out.flush()
        else:
            logger.error("unknown IPC message %r", kind)

    def _sum_in_flight(self, model: str) -> None:
        self.metrics.set_in_flight(model, sum(c.in_flight[model] for c in self.conns))

    def _add(self, conn: _Connection, request: Request) -> None:
        rid = request.request_id
        if self.model is None:
            conn.put(error_output(rid, "the model is not loaded", ErrorKind.ENGINE_DEAD))
            return
        loop: Any = self.model.loop
        try:
            if hasattr(loop, "add_to"):
                loop.add_to(request, conn)
            else:  # a loop without add_to (test fakes): pump its stream
                asyncio.get_running_loop().create_task(self._pump(loop.add(request), conn))
        except Exception as exc:  # noqa: BLE001 - the front end maps it (400 / 503)
            conn.put(error_output(rid, str(exc), error_kind(exc)))
            return
        conn.live.add(rid)

    @staticmethod
    async def _pump(stream: Any, conn: _Connection) -> None:
        async for out in stream:
            conn.put(out)

    async def _serve_conn(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, writer)
        self.conns.add(conn)
        if self.info is not None:
            conn.out.send(("hello", self.info))
            self.mark(conn)
        try:
            while (frame := await read_frame(reader)) is not None:
                for msg in frame:
                    self._handle(conn, msg)
        finally:
            self.conns.discard(conn)
            self._dirty.discard(conn)
            for model in conn.in_flight:
                self._sum_in_flight(model)
            conn.out.closed = True
            if self.model is not None and conn.live:
                logger.warning("front end gone: aborting its %d requests", len(conn.live))
                for rid in list(conn.live):
                    self.model.loop.abort(rid)
            writer.close()

    # ---- the process ----------------------------------------------------------------------
    async def run(self, listener: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(STOP_SIGNAL, self._stop.set)
        for sig in (signal.SIGTERM, signal.SIGINT):  # a signal to the whole group (e.g. a
            loop.add_signal_handler(sig, lambda: None)  # cgroup stop) must not cut the drain
        server = await asyncio.start_unix_server(self._serve_conn, sock=listener)
        try:
            self.model = await self.loader(self.settings, self.metrics)
        except Exception as exc:  # noqa: BLE001 - reported to the front ends + exit code
            logger.exception("model load failed")
            await self._broadcast_dead(f"model load failed: {exc}")
            return 1
        self.info = _info(self.model)
        for conn in self.conns:
            conn.out.send(("hello", self.info))
            self.mark(conn)  # the first step frame carries the stats
        code = await self._watch()
        server.close()
        await self._shutdown(code)
        return code

    async def _watch(self) -> int:
        """Until SIGUSR1 (0) or the engine loop's death callback (1)."""
        assert self.model is not None
        self.model.loop.on_death(self._died)
        await self._stop.wait()
        if self._death is not None:
            await self._broadcast_dead(f"engine died: {self._death}")
            return 1
        logger.info("engine core: stopping")
        return 0

    def _died(self, reason: str) -> None:
        self._death = reason
        self._stop.set()

    async def _broadcast_dead(self, reason: str) -> None:
        for conn in list(self.conns):
            conn.out.send(("dead", reason))
            conn.out.flush()
        await asyncio.sleep(DEAD_NOTICE_S)

    async def _shutdown(self, code: int) -> None:
        if self.model is None:
            return
        await stop_model(self.model)
        self._flush()
        for conn in list(self.conns):
            conn.out.close()


def _info(model: ServingModel) -> EngineInfo:
    sched = getattr(model.loop, "scheduler", None)
    limits = None
    if sched is not None:
        limits = (sched.max_model_len, sched.vocab_size,
                  sched.allocator.num_blocks * sched.allocator.block_size)
    return EngineInfo(name=model.name, aliases=model.aliases, backend=model.backend,
                      max_context=model.max_context, max_batch_size=model.max_batch_size,
                      max_queue_size=model.max_queue_size, tokenizer=model.tokenizer,
                      limits=limits)
