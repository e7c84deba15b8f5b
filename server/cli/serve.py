"""`trtserve serve`: run the HTTP server (and the /metrics listener) in one process.

Every option mirrors a ServerSettings field (and env `TRTSERVE_<NAME>`); defaults live there.
SIGTERM/SIGINT: readiness -> 503 at once, in-flight requests get --drain-timeout to finish, the
rest get an error event, then exit 0. If the engine loop dies the process exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from pydantic import ValidationError as PydanticError

from server.app import FrontEnd, Loader, create_app, create_metrics_app
from server.app_state import AppState
from server.cli.log_format import configure_logging
from server.cli.preflight import (
    PreflightError,
    adopt_engine_limits,
    bind_ports,
    read_chat_template,
)
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

DEAD_EXIT_DELAY_S = 1.0  # health shows 503 this long before a dead engine exits the process
GRACEFUL_CLOSE_S = 3.0  # uvicorn's wait for connections after the drain
# uvicorn's standard extras: httptools parses/serialises HTTP/1.1 in C ("auto" falls back to h11
# where it is missing) and uvloop runs the event loop (docs/host-path.md has the numbers).
HTTP_PROTOCOL = "auto"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_option(parser: argparse.ArgumentParser, name: str, field: Any) -> None:
    env = f"TRTSERVE_{name.upper()}"
    default = field.default.get_secret_value() if hasattr(field.default, "get_secret_value") \
        else field.default
    shown = "unset" if default in (None, "", ()) else default
    help_text = f"{field.description} [default: {shown}; env {env}]"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(typing.get_args(annotation)[0] if typing.get_origin(annotation)
                           is typing.Annotated else annotation) is tuple:
        kwargs["nargs"] = "+"
    elif typing.get_origin(annotation) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
    elif annotation in (int, float):
        kwargs["type"] = annotation
    elif isinstance(annotation, types.UnionType) and args and args[0] in (int, float):
        kwargs["type"] = args[0]
    parser.add_argument(_flag(name), **kwargs)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="Run the HTTP inference server.",
                                   description=__doc__.splitlines()[0])
    for name, field in ServerSettings.model_fields.items():
        _add_option(parser, name, field)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    return ServerSettings(**given)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner drains first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _servers(settings: ServerSettings, loader: Loader | None, frontend: FrontEnd | None = None
             ) -> tuple[list[_Server], AppState]:
    if loader is None:
        from server.model_loader import load_serving_model as loader

    app = create_app(settings, loader, frontend=frontend)
    common: dict[str, Any] = {"host": settings.host, "log_config": None,
                              "log_level": settings.log_level, "http": HTTP_PROTOCOL,
                              "timeout_graceful_shutdown": GRACEFUL_CLOSE_S,
                              "timeout_keep_alive": settings.keep_alive_timeout}
    servers = [_Server(uvicorn.Config(app, port=settings.port, lifespan="on", **common))]
    if settings.metrics_port:
        servers.append(_Server(uvicorn.Config(create_metrics_app(app), port=settings.metrics_port,
                                              lifespan="off", access_log=False, **common)))
    return servers, app.state.trtserve


async def _announce(servers: list[_Server], sockets: list[Any], settings: ServerSettings
                    ) -> None:
    """"listening on" once every listener accepts connections (after the model loaded)."""
    while not all(s.started for s in servers):
        if any(s.should_exit for s in servers):
            return
        await asyncio.sleep(0.05)
    ports = [sock.getsockname()[1] for sock in sockets]
    logger.info("listening on http://%s:%d (metrics on %s)", settings.host, ports[0],
                ports[1] if len(ports) > 1 else "the main port only")


async def serve(settings: ServerSettings, loader: Loader | None = None,
                sockets: list[Any] | None = None, frontend: FrontEnd | None = None) -> int:
    """Run until SIGTERM/SIGINT (exit code 0 after the drain) or engine death (1). `sockets`:
    the ports bound before loading (bind_ports); bound here when not given. `frontend`: set in
    each front-end process of --api-server-count (server/split/serve.py)."""
    sockets = sockets if sockets is not None else bind_ports(settings)
    servers, state = _servers(settings, loader, frontend)
    state.prep.warm()
    lifecycle = state.lifecycle
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop_servers() -> None:
        for s in servers:
            s.should_exit = True

    async def drain_then_stop() -> None:
        await lifecycle.drain(settings.drain_timeout)
        stop_servers()

    def on_signal(signum: int) -> None:
        if stopping:
            logger.warning("second signal %d: exiting now", signum)
            for s in servers:
                s.force_exit = True
            stop_servers()
            return
        logger.info("signal %d: draining (readiness now 503)", signum)
        stopping.append(asyncio.create_task(drain_then_stop()))

    lifecycle.on_exit = lambda code: loop.call_later(DEAD_EXIT_DELAY_S, stop_servers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if not await _run_listeners(servers, sockets, settings):
        return 1
    return lifecycle.exit_code


async def _run_listeners(servers: list[_Server], sockets: list[Any],
                         settings: ServerSettings) -> bool:
    """Serve on the bound sockets until the servers stop; False when a listener failed."""
    announce = asyncio.create_task(_announce(servers, sockets, settings))
    results = await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in
                                     zip(servers, sockets, strict=True)), return_exceptions=True)
    announce.cancel()
    for result in results:
        if isinstance(result, BaseException):
            logger.error("listener failed: %r", result)
            return False
    return all(s.started for s in servers)


def run_serve(settings: ServerSettings, loader: Loader | None = None,
              sockets: list[Any] | None = None) -> int:
    """`serve` on the event loop the CLI uses (uvloop when installed, else asyncio's).

    The documented hook for tests and benchmarks: `loader` replaces the model loader, e.g. with
    an instant executor (bench/host_path_server.py). With --api-server-count N >= 1 the loader
    runs in the engine-core process and N front-end processes serve HTTP (server/split/serve.py)."""
    if settings.api_server_count > 0:
        from server.split.serve import ServeHooks, run_split

        if loader is None:
            from server.model_loader import load_serving_model as loader
        return run_split(settings, loader, sockets if sockets is not None
                         else bind_ports(settings), ServeHooks(_loop_factory, serve))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(settings, loader, sockets=sockets))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; other platforms lack it
        logger.warning("uvloop is not installed: using asyncio's event loop (slower)")
        return None
    return uvloop.new_event_loop


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except PydanticError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            logger.error("invalid option %s: %s", _flag(loc) if loc else "", err["msg"])
        return 2
    configure_logging(settings.log_format, settings.log_level)
    from engine.config import ModelError

    try:  # before the model loads: a busy port or an unusable --engine-dir fails at once
        settings = adopt_engine_limits(settings)
        if settings.chat_template:
            read_chat_template(settings.chat_template)
        sockets = bind_ports(settings)
    except (PreflightError, ModelError) as exc:
        logger.error("%s", " ".join(str(exc).split()))
        return 2
    try:
        return run_serve(settings, sockets=sockets)
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace()))
