"""Notice a client that went away while its request is still running, and abort the request;
and a streamed response that holds its request until the last byte.

Reading `receive()` after the body was consumed blocks until the server reports
`http.disconnect` (the client closed the connection or the response completed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@contextlib.asynccontextmanager
async def abort_on_disconnect(request: Request, abort: Callable[[], None],
                              request_id: str) -> AsyncIterator[asyncio.Task[None]]:
    """While inside, a client disconnect calls `abort()` at once."""

    async def watch() -> None:
        await _wait_disconnect(request)
        logger.info("[%s] client disconnected", request_id)
        abort()

    task = asyncio.create_task(watch())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class HeldStreamingResponse(StreamingResponse):
    """A streamed answer that holds its request (`async with owner`, a Generation handed on by
    the route) while it is sent: the request ends when the last byte went out, the client went
    away or the send failed, even if the body was never iterated."""

    def __init__(self, owner: AbstractAsyncContextManager[Any], content: AsyncIterator[bytes],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.owner:
            await super().__call__(scope, receive, send)
