"""Request parsing and tokenising off the event loop, on bounded pools.

Measured (bench/results/health_under_load.md): `json.loads` holds the GIL for its whole run (40-270
ms for a 4 MiB body, depending on its shape), so a thread would stall the event loop just as
much; bodies over INLINE_PARSE_BYTES are therefore parsed, size-checked (server/request/limits.py)
and validated in a small process pool, which sends back only the bounded, validated result. The
tokenizer's `encode_batch` releases the GIL, so tokenising and chat templates run on a thread
pool. Both pools are bounded: a flood of huge bodies queues for them while the event loop keeps
answering health checks. The processes start with `trtserve serve` (`warm`), else at the first
large body; until they run, large bodies are parsed on the threads.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from server.errors import UnavailableError
from server.api.json_body import parse_json_body
from server.api.openai.schema import ChatMessage, ChatRequest, _Base, message_text, validate_body
from server.split.children import die_with_parent
from server.request.limits import RequestLimits, check_openai_body, check_triton_body
from server.api.triton.parse import TritonInputs, parse_triton_body

logger = logging.getLogger(__name__)

INLINE_PARSE_BYTES = 16 * 1024  # smaller bodies parse on the event loop (well under 1 ms)
MAX_IGNORED_LOGGED = 16  # names of ignored Triton parameters kept for the log
T = TypeVar("T")


def parse_triton_request(raw: bytes, limits: RequestLimits) -> TritonInputs:
    """Body bytes -> checked Triton inputs (runs in a worker process for large bodies)."""
    body = parse_json_body(raw)
    check_triton_body(body, limits)
    inputs = parse_triton_body(body)
    del inputs.ignored_parameters[MAX_IGNORED_LOGGED:]
    return inputs


def parse_openai_request(raw: bytes, cls: type[_Base], limits: RequestLimits) -> _Base:
    """Body bytes -> validated OpenAI request, reduced to what the routes read."""
    body = parse_json_body(raw)
    check_openai_body(body, limits)
    req = validate_body(cls, body)
    update: dict[str, Any] = {}
    if req.stream_options is not None:
        update["stream_options"] = {"include_usage": req.include_usage()}
    if isinstance(req, ChatRequest):
        update["messages"] = [ChatMessage(role=m.role, content=message_text(m))
                              for m in req.messages]
    return req.model_copy(update=update) if update else req


class RequestPrep:
    """The two pools; `close()` at shutdown."""

    def __init__(self, processes: int, threads: int) -> None:
        self._num_processes = processes
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="trtserve-prep")
        self._processes: ProcessPoolExecutor | None = None
        self._warming: list[Future[int]] = []  # one no-op per worker process

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def parse(self, fn: Callable[..., T], raw: bytes, *args: Any) -> T:
        """fn(raw, *args): inline for small bodies, else on the process (or thread) pool."""
        if len(raw) <= INLINE_PARSE_BYTES:
            return fn(raw, *args)
        pool = self._processes
        if pool is None or not self.processes_ready:
            self._drop_if_broken()
            self.warm()  # until the processes run (a spawn takes ~1 s), parse on a thread
            return await self.in_thread(fn, raw, *args)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, raw, *args)
        except BrokenProcessPool:
            logger.error("a request parser process died; starting a new pool")
            if self._processes is pool:
                self._processes, self._warming = None, []
                pool.shutdown(wait=False, cancel_futures=True)
            raise UnavailableError("request parser restarted; retry the request") from None

    @property
    def processes_ready(self) -> bool:
        """True once every parser process has started (never with parse_processes 0)."""
        return bool(self._warming) and all(f.done() and f.exception() is None
                                           for f in self._warming)

    def warm(self) -> None:
        """Start the parser processes (in the background); `serve` calls it at startup."""
        if self._num_processes == 0 or self._processes is not None:
            return
        context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._processes = ProcessPoolExecutor(self._num_processes, mp_context=context,
                                              initializer=die_with_parent,
                                              initargs=(os.getpid(),))
        self._warming = [self._processes.submit(int) for _ in range(self._num_processes)]

    def _drop_if_broken(self) -> None:
        if self._processes is not None and any(f.done() and f.exception() is not None
                                               for f in self._warming):
            logger.error("request parser processes failed to start; retrying")
            self._processes.shutdown(wait=False, cancel_futures=True)
            self._processes, self._warming = None, []

    def close(self) -> None:
        """Stop both pools without waiting. Parser processes still starting (a spawn under load
        takes seconds) are terminated: the interpreter's exit would otherwise join them."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        pool, self._processes = self._processes, None
        if pool is not None:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.terminate()
