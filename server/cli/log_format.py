"""Log output of `trtserve serve`: text or one JSON object per line (`--log-format`), and
uvicorn's start/stop lines once per process (two listeners would print them twice; the server's
own "listening on" line, logged once both accept connections, replaces "Uvicorn running on").

A record may carry structured fields in `extra={"fields": {...}}`: the JSON format emits them as
keys; the text format shows only the message (which names them too).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", **fields} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage()}
        body.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class UvicornOnce(logging.Filter):
    """Drops uvicorn's "running on" lines and repeats of its process start/stop lines."""

    ONCE = ("Started server process [%d]", "Finished server process [%d]", "Shutting down",
            "Waiting for application shutdown.", "Application shutdown complete.")

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("Uvicorn running on"):
            return False
        if msg in self.ONCE:
            if msg in self._seen:
                return False
            self._seen.add(msg)
        return True


def configure_logging(log_format: LogFormat, level: str) -> None:
    """Root handler format and level; uvicorn's lines de-duplicated."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level.upper())
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, UvicornOnce) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(UvicornOnce())
