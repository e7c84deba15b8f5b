"""`--api-server-count N` (N >= 1): one engine-core process and N HTTP front-end processes.

The process that ran `trtserve serve` binds the HTTP ports (before anything loads) and the IPC
socket, forks the engine-core process (server/split/engine_core.py: model, EngineLoop, Scheduler,
executor) and N front ends (the FastAPI app, parsing, tokenising, detokenising, SSE; each
accepts on the same inherited listening sockets, as uvicorn's workers do), then supervises:

- SIGTERM/SIGINT: each front end drains (readiness 503, in-flight requests finish within
  --drain-timeout) and exits; then the engine process is stopped; exit 0 when all exited 0.
- The engine process dies: every front end turns not-ready (503), fails its in-flight requests
  and exits 1; so does this process.
- A front end dies: it is reported and the server shuts down (the others drain), exit 1; the
  engine aborts the dead front end's requests, freeing their KV blocks. The orchestrator's
  restart policy brings the server back, as for a crash of the one-process server.
- This process dies: its children get SIGKILL from the kernel (PR_SET_PDEATHSIG): no orphans.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from server.app import Loader
from server.split.engine_core import STOP_SIGNAL
from server.settings import ServerSettings
from server.split.children import die_with_parent

logger = logging.getLogger(__name__)

POLL_S = 0.2
ENGINE_STOP_S = 30.0  # the engine's own stop (abort leftovers, close the executor)
FRONTEND_GRACE_S = 15.0  # beyond --drain-timeout, for uvicorn's close and process exit


def _child_setup(parent: int) -> None:
    """In each child: die with the parent, and leave its process group so a terminal's Ctrl-C
    reaches only the parent (which then stops the children in order)."""
    die_with_parent(parent)
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class ServeHooks:
    """What the children run: the CLI's event-loop factory and one front end's `serve`."""

    loop_factory: Callable[[], Callable[[], asyncio.AbstractEventLoop] | None]
    serve: Callable[..., Coroutine[Any, Any, int]]


def _engine_child(settings: ServerSettings, loader: Loader, listener: socket.socket,
                  sockets: list[socket.socket], parent: int, hooks: ServeHooks) -> None:
    _child_setup(parent)
    for sock in sockets:  # the engine never accepts HTTP connections
        sock.close()
    from server.split.engine_core import EngineCore

    with asyncio.Runner(loop_factory=hooks.loop_factory()) as runner:
        code = runner.run(EngineCore(settings, loader).run(listener))
    sys.exit(code)


def _frontend_child(index: int, settings: ServerSettings, sockets: list[socket.socket],
                    path: str, parent: int, loaded: Any, hooks: ServeHooks) -> None:
    _child_setup(parent)
    from server.app import FrontEnd
    from server.split.engine_client import EngineClient, RemoteMetrics, frontend_loader

    client = EngineClient(path)
    count = settings.api_server_count
    frontend = FrontEnd(metrics=RemoteMetrics(client), request_id_prefix=f"{index:02x}",
                        ready_gate=lambda: loaded.value >= count)
    with asyncio.Runner(loop_factory=hooks.loop_factory()) as runner:
        code = runner.run(hooks.serve(settings, frontend_loader(client, loaded), sockets=sockets,
                                frontend=frontend))
    sys.exit(code)


class Supervisor:
    def __init__(self, settings: ServerSettings, engine: BaseProcess,
                 frontends: list[BaseProcess]) -> None:
        self.settings = settings
        self.engine = engine
        self.frontends = frontends
        self.code = 0
        self.stopping_at: float | None = None  # monotonic time the shutdown began
        self.signals = 0

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            logger.info("signal %d: draining %d front ends", signum, len(self.frontends))
        else:
            logger.warning("signal %d again: front ends exit now", signum)
        self._stop_frontends()

    def _stop_frontends(self) -> None:
        if self.stopping_at is None:
            self.stopping_at = time.monotonic()
        for proc in self.frontends:
            if proc.exitcode is None and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        while any(p.exitcode is None for p in self.frontends):
            alive = [p.sentinel for p in (self.engine, *self.frontends) if p.exitcode is None]
            multiprocessing.connection.wait(alive, POLL_S)
            self._check_children()
        self._stop_engine()
        codes = [p.exitcode for p in self.frontends] + [self.engine.exitcode]
        if any(c != 0 for c in codes):
            self.code = 1
        logger.info("server exited (front ends %s, engine %s)", codes[:-1], codes[-1])
        return self.code

    def _check_children(self) -> None:
        if self.engine.exitcode is not None and self.stopping_at is None:
            logger.error("engine process exited with %s: front ends report not ready and exit",
                         self.engine.exitcode)
            self.code = 1
            self.stopping_at = time.monotonic()  # they exit on their own; kill after the grace
        for i, proc in enumerate(self.frontends):
            if proc.exitcode is not None and self.stopping_at is None:
                logger.error("front end %d (pid %s) exited with %s: shutting the server down",
                             i, proc.pid, proc.exitcode)
                self.code = 1
                self._stop_frontends()
        grace = self.settings.drain_timeout + FRONTEND_GRACE_S
        if self.stopping_at is not None and time.monotonic() - self.stopping_at > grace:
            for proc in self.frontends:
                if proc.exitcode is None:
                    logger.error("front end pid %s did not exit: killing it", proc.pid)
                    proc.kill()
                    proc.join(5)

    def _stop_engine(self) -> None:
        if self.engine.exitcode is None and self.engine.pid is not None:
            os.kill(self.engine.pid, STOP_SIGNAL)
            self.engine.join(ENGINE_STOP_S)
        if self.engine.exitcode is None:
            logger.error("engine process did not stop: killing it")
            self.engine.kill()
            self.engine.join(5)


def run_split(settings: ServerSettings, loader: Loader, sockets: list[socket.socket],
              hooks: ServeHooks) -> int:
    """Fork the engine and the front ends on the bound `sockets`, supervise until all exit.

    `hooks` hands in cmd_serve's event-loop factory and its `serve` (one HTTP front end), so
    this module does not import the command that calls it."""
    ipc_dir = Path(tempfile.mkdtemp(prefix="trtserve-ipc-"))  # mode 0700: ours only
    path = str(ipc_dir / "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    ctx = multiprocessing.get_context("fork")  # before any event loop or thread exists here
    me = os.getpid()
    loaded = ctx.Value("i", 0)  # front ends that have the model: all of them -> ready
    try:
        engine = ctx.Process(target=_engine_child, name="trtserve-engine",
                             args=(settings, loader, listener, sockets, me, hooks))
        engine.start()
        listener.close()
        frontends = [ctx.Process(target=_frontend_child, name=f"trtserve-http-{i}",
                                 args=(i, settings, sockets, path, me, loaded, hooks))
                     for i in range(settings.api_server_count)]
        for proc in frontends:
            proc.start()
        for sock in sockets:
            sock.close()
        logger.info("engine core pid %d; %d HTTP front ends, pids %s", engine.pid,
                    len(frontends), " ".join(str(p.pid) for p in frontends))
        return Supervisor(settings, engine, frontends).run()
    finally:
        shutil.rmtree(ipc_dir, ignore_errors=True)
