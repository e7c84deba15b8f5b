"""A front end's view of the engine-core process (`--api-server-count N`).

`EngineClient` has the shape the HTTP layer expects of an engine loop (server/serving.py:
add/abort/stats/dead/num_unfinished), reached over the IPC socket (server/split/frames.py); each
request's deltas land in a scheduler.loop.RequestStream, so a lagging consumer still gets them
merged. When the engine process goes away every live request ends with an ERROR output and the
`on_death` callback is called once. `RemoteMetrics` forwards the request records and the
in-flight counts to the engine process, which owns every metric; `frontend_loader` is the app's loader: connect, take the model's tokenizer and limits
from the engine's hello.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from scheduler.loop import RequestStream
from scheduler.request import EngineDeadError, ErrorKind, Request
from scheduler.stats import SchedulerStats
from scheduler.validation import validate_params, validate_prompt
from server.app import Loader
from server.errors import UnavailableError
from server.split.frames import EngineInfo, FrameWriter, error_output, output_from, read_frame
from server.metrics.server_metrics import RequestRecord, ServerMetrics
from server.serving import ServingModel
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

METRICS_TIMEOUT_S = 10.0
STOPPED = "front end stopped"


class EngineClient:
    """EngineLoopLike over the IPC socket to the engine-core process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._out: FrameWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._hello: asyncio.Future[EngineInfo] | None = None
        self._streams: dict[str, RequestStream] = {}
        self._queries: dict[int, asyncio.Future[Any]] = {}
        self._query_ids = itertools.count()
        self._dead: BaseException | None = None
        self._death_callback: Callable[[str], None] | None = None
        self._stats: SchedulerStats | None = None
        self._unfinished = 0  # the engine's count at its last step
        self._added = 0  # adds sent since then
        self.info: EngineInfo | None = None

    async def connect(self) -> EngineInfo:
        """Open the socket, then wait for the engine's hello (sent once its model loaded)."""
        reader, writer = await asyncio.open_unix_connection(self.path)
        self._out = FrameWriter(writer)
        self._hello = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(reader), name="trtserve-engine-client")
        self.info = await self._hello
        return self.info

    def send(self, message: tuple[Any, ...]) -> None:
        if self._out is not None and self._dead is None:
            self._out.send(message)

    # ---- EngineLoopLike ------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Close the connection (the engine aborts whatever this front end left running)."""
        if self._out is not None:
            self._out.close()
        if self._reader is not None:
            self._reader.cancel()
        self._fail(STOPPED)

    def add(self, request: Request) -> RequestStream:
        if self._dead is not None:
            raise EngineDeadError(f"engine is dead: {self._dead}")
        info = self.info
        if info is not None and info.limits is not None:  # 400 before any stream starts
            max_model_len, vocab, kv_tokens = info.limits
            validate_params(request.params, max_model_len, vocab)
            validate_prompt(request.prompt_token_ids, request.params, max_model_len, vocab,
                            kv_tokens)
        stream = RequestStream(request.request_id, self)  # type: ignore[arg-type]
        self._streams[request.request_id] = stream
        self._added += 1
        self.send(("add", request))
        return stream

    def abort(self, request_id: str) -> None:
        if request_id in self._streams:
            self.send(("abort", request_id))

    def stats(self) -> SchedulerStats:
        if self._stats is None:
            raise UnavailableError("no engine statistics yet")
        return self._stats

    @property
    def dead(self) -> BaseException | None:
        return self._dead

    @property
    def num_unfinished(self) -> int:
        return self._unfinished + self._added

    def on_death(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once when the engine process is lost (not at our own stop)."""
        self._death_callback = callback
        if self._dead is not None and str(self._dead) != STOPPED:
            callback(str(self._dead))

    async def query_metrics(self) -> tuple[bytes, str]:
        if self._out is None or self._dead is not None:
            raise UnavailableError("the engine process is not reachable")
        qid = next(self._query_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queries[qid] = future
        self.send(("metrics", qid))
        try:
            result: tuple[bytes, str] = await asyncio.wait_for(future, METRICS_TIMEOUT_S)
        finally:
            self._queries.pop(qid, None)
        return result

    # ---- frames from the engine ----------------------------------------------------------
    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "the engine process closed the connection"
        try:
            while (frame := await read_frame(reader)) is not None:
                for msg in frame:
                    if msg[0] == "step":
                        self._step(msg[1], msg[2], msg[3])
                    elif msg[0] == "reply":
                        future = self._queries.get(msg[1])
                        if future is not None and not future.done():
                            future.set_result(msg[2])
                    elif msg[0] == "hello":
                        if self._hello is not None and not self._hello.done():
                            self._hello.set_result(msg[1])
                    elif msg[0] == "dead":
                        reason = msg[1]
                        return
        finally:
            self._fail(reason)

    def _step(self, outputs: list[tuple[Any, ...]], stats: SchedulerStats | None,
              unfinished: int) -> None:
        streams = self._streams
        for t in outputs:
            stream = streams.get(t[0])
            if stream is None:
                continue
            stream.put(output_from(t))
            if t[3]:  # finished
                del streams[t[0]]
        if stats is not None:
            self._stats = stats
        self._unfinished, self._added = unfinished, 0

    def _fail(self, reason: str) -> None:
        """The engine is gone: every live request ends with an error, new ones are refused."""
        if self._dead is not None:
            return
        level = logging.INFO if reason == STOPPED else logging.ERROR
        logger.log(level, "engine connection closed: %s", reason)
        self._dead = EngineDeadError(reason)
        for rid, stream in list(self._streams.items()):
            stream.put(error_output(rid, reason, ErrorKind.ENGINE))
        self._streams.clear()
        for future in [*self._queries.values(), self._hello]:
            if future is not None and not future.done():
                future.set_exception(EngineDeadError(reason))
        if reason != STOPPED and self._death_callback is not None:
            self._death_callback(reason)


class RemoteMetrics(ServerMetrics):
    """A front end's metrics: request records go to the engine process, which owns the
    registry; /metrics asks it (the same totals whichever front end answers)."""

    def __init__(self, client: EngineClient) -> None:  # no registry of its own
        self.client = client

    def set_in_flight(self, model: str, count: int) -> None:
        self.client.send(("in_flight", model, count))

    def request_finished(self, rec: RequestRecord) -> None:
        self.client.send(("finished", rec))

    def observe_step(self, stats: SchedulerStats) -> None:
        return None

    def exposition(self) -> tuple[bytes, str]:
        raise UnavailableError("metrics of a front end come from the engine process")

    async def exposition_async(self) -> tuple[bytes, str]:
        return await self.client.query_metrics()


def frontend_loader(client: EngineClient, loaded: Any) -> Loader:
    """The front end's loader; `loaded` (a shared counter) counts the front ends that have the
    model, for the readiness gate."""
    async def load(settings: ServerSettings, metrics: ServerMetrics) -> ServingModel:
        info = await client.connect()
        with loaded.get_lock():
            loaded.value += 1
        return ServingModel(name=info.name, aliases=info.aliases, tokenizer=info.tokenizer,
                            loop=client, max_context=info.max_context,
                            max_batch_size=info.max_batch_size,
                            max_queue_size=info.max_queue_size, backend=info.backend)
    return load
