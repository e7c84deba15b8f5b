"""Checks `trtserve serve` makes before it loads a model, so a mistake costs a second, not a load:
the listening ports are bound first (a busy port fails at once), and an `--engine-dir` is checked
against this machine and the flags (its limits adopted, larger flags refused).

`adopt_engine_limits` is the seam for the engine's step limits: it turns the build's config.json
into the settings the scheduler and the executor are sized from.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from server.settings import ServerSettings

logger = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """The server cannot start with these settings; the message is one line."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (not yet listening; uvicorn listens on it once the model is loaded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PreflightError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another "
                             "server there? choose another --port / --metrics-port)") from None
    return sock


def bind_ports(settings: ServerSettings) -> list[socket.socket]:
    """The main port, then the metrics port when enabled; all or none."""
    ports = [settings.port] + ([settings.metrics_port] if settings.metrics_port else [])
    bound: list[socket.socket] = []
    try:
        for port in ports:
            bound.append(bind_socket(settings.host, port))
    except PreflightError:
        for sock in bound:
            sock.close()
        raise
    return bound


def adopt_engine_limits(settings: ServerSettings) -> ServerSettings:
    """With --engine-dir: refuse a directory this machine cannot serve (another GPU or TensorRT
    version, flags above its limits, a graph-shaping flag it was not built with); return the
    settings with its limits adopted."""
    if not settings.engine_dir:
        return settings
    from engine.engine_dir import BUILD_FLAGS, LIMIT_NAMES, adopt_limits, check_build_flags
    from engine.engine_dir_here import check_engine_dir

    config = check_engine_dir(Path(settings.engine_dir), settings.backend, settings.dtype)
    check_build_flags(config, {name: getattr(settings, name) for name in BUILD_FLAGS
                               if name in settings.model_fields_set})
    fields = ServerSettings.model_fields
    requested = {name: getattr(settings, name) if name in settings.model_fields_set else None
                 for name in LIMIT_NAMES if name in fields}
    adopted = adopt_limits(config, requested)
    update = {name: value for name, value in adopted.items() if name in fields}
    logger.info("engine %s: %s", settings.engine_dir,
                ", ".join(f"{k} {v}" for k, v in adopted.items()))
    return settings.model_copy(update=update)


def read_chat_template(path: str) -> str:
    """The text of a --chat-template file (PreflightError when unreadable or empty)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PreflightError(f"--chat-template {path}: cannot read it ({exc})") from None
    if not text.strip():
        raise PreflightError(f"--chat-template {path} is empty")
    return text
