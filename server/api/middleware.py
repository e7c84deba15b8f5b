"""Pure-ASGI guards that run before routing: header/body size limits and API-key auth.

Body limit: a Content-Length over the limit is refused with 413 before any byte is read; a chunked
body is cut off (413) as soon as it passes the limit. Body read timeout: a body not complete
within `body_timeout` seconds of the request head is answered 408 and the connection closed.
Both apply to request bodies only: the response path (every streamed SSE chunk) is not wrapped. Auth: when a key is set every route needs
`Authorization: Bearer <key>` (scheme case-insensitive, key compared in constant time) except the
exact health and /metrics GET paths; OPTIONS is no exception.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import (
    ApiError,
    BodyTimeoutError,
    BodyTooLargeError,
    UnauthorizedError,
    ValidationError,
    error_body,
    error_headers,
)

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
MAX_HEADERS = 100  # header lines per request at most
MAX_HEADER_BYTES = 32 * 1024  # total size of the header block at most


async def send_error(send: Send, err: ApiError, openai: bool = False) -> None:
    body = error_body(err, openai=openai)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(err).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [v for k, v in scope.get("headers", []) if k.lower() == name]


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float = 0.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout  # seconds; 0 = no limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > \
                MAX_HEADER_BYTES:
            await send_error(send, ApiError("request header fields too large", 431))
            return
        lengths = _header(scope, b"content-length")
        if lengths:
            try:
                declared = int(lengths[0])
            except ValueError:
                await send_error(send, ValidationError("invalid Content-Length header"))
                return
            if declared > self.max_bytes:
                await send_error(send, BodyTooLargeError(
                    f"request body of {declared} bytes exceeds the limit of {self.max_bytes}"))
                return
        if _header(scope, b"content-encoding") not in ([], [b"identity"]):
            await send_error(send, ValidationError("Content-Encoding is not supported"))
            return
        await self.app(scope, _BodyReader(receive, self.max_bytes, self.body_timeout), send)


class _BodyReader:
    """The app's `receive`: counts body bytes and bounds the time until the body is complete."""

    def __init__(self, receive: Receive, max_bytes: int, timeout: float) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout if timeout > 0 else None
        self._received = 0
        self._complete = False

    async def __call__(self) -> Message:
        if self._complete or self._deadline is None:
            message = await self._receive()
        else:
            try:
                message = await asyncio.wait_for(self._receive(),
                                                 max(self._deadline - time.monotonic(), 0.0))
            except TimeoutError:
                logger.info("request body not received within %gs: 408", self._timeout)
                raise BodyTimeoutError(
                    f"request body not received within {self._timeout:g} s") from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            self._complete = not message.get("more_body", False)
            if self._received > self._max_bytes:
                raise BodyTooLargeError(
                    f"request body exceeds the limit of {self._max_bytes} bytes")
        else:
            self._complete = True
        return message


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode("utf-8")

    def _authorized(self, scope: Scope) -> bool:
        values = _header(scope, b"authorization")
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(token.strip(), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_open = scope["path"] in OPEN_PATHS and scope["method"] in ("GET", "HEAD")
        if is_open or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        logger.info("401 %s %s", scope["method"], scope["path"])
        await send_error(send, UnauthorizedError("missing or invalid API key"),
                         openai=scope["path"].startswith("/v1/"))
