"""One log line per finished generation request: id, route, model, prompt/output tokens, TTFT,
end-to-end time and finish reason (INFO; JSON keys of the same names with --log-format json).

The route comes from a context variable that `RouteContext` (a pure ASGI middleware) sets for
each HTTP request; the request handler's tasks inherit it.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

logger = logging.getLogger("trtserve.requests")

ROUTE: contextvars.ContextVar[str] = contextvars.ContextVar("trtserve_route", default="-")


class RouteContext:
    """ASGI middleware: ROUTE = "METHOD /path" for the duration of an HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        token = ROUTE.set(f"{scope.get('method', '')} {scope.get('path', '')}")
        try:
            await self.app(scope, receive, send)
        finally:
            ROUTE.reset(token)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def log_finished(request_id: str, model: str, prompt_tokens: int, output_tokens: int,
                 ttft_s: float | None, e2e_s: float, finish_reason: str) -> None:
    """The line itself; `finish_reason` is the engine's (stop, length, ...) or the failure."""
    fields = {"request_id": request_id, "route": ROUTE.get(), "model": model,
              "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
              "ttft_ms": _ms(ttft_s), "e2e_ms": _ms(e2e_s), "finish_reason": finish_reason}
    ttft = "-" if ttft_s is None else f"{ttft_s * 1000:.0f}ms"
    logger.info("request %s %s model=%s prompt_tokens=%d output_tokens=%d ttft=%s e2e=%.0fms "
                "finish=%s", request_id, fields["route"], model, prompt_tokens, output_tokens,
                ttft, e2e_s * 1000.0, finish_reason, extra={"fields": fields})
