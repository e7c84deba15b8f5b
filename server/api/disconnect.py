"""Notice a client that went away while its request is still running, and abort the request.

Reading `receive()` after the body was consumed blocks until the server reports
`http.disconnect` (the client closed the connection or the response completed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request

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
