"""Response bytes for every route: compact JSON, and server-sent events after the first output.

Compact JSON: orjson, with the json module as fallback. orjson encodes a delta event several
times faster than `json.dumps`. What it refuses (lone surrogates, integers over 64 bits) goes
through the standard encoder, lone surrogates written as `\\udXXX` escapes. Differences in what
orjson writes: a float may be spelled differently (-0.000012 for -1.2e-05, the same number), and
a non-finite float is written `null` (json.dumps writes `NaN`/`-Infinity`, which is not JSON);
the routes' floats are log-probs of chosen tokens, finite.

Streaming (Triton generate_stream and the OpenAI routes with "stream": true) waits for the
request's first output before it answers: anything that fails before it (a queue timeout,
the engine dying, an abort at shutdown) is a plain JSON error with its own status, as for a
request that does not stream. After that the status is 200 and a failure is an error event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from server.api.disconnect import HeldStreamingResponse, abort_on_disconnect
from server.errors import ApiError

logger = logging.getLogger(__name__)

SSE_MEDIA = "text/event-stream; charset=utf-8"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"  # OpenAI's last event
_SORTED = orjson.OPT_SORT_KEYS
T = TypeVar("T")
Item = TypeVar("Item", contravariant=True)


def compact_json(obj: Any, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON, as json.dumps(separators=(",", ":"), ensure_ascii=False)."""
    try:
        return orjson.dumps(obj, option=_SORTED if sort_keys else 0)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "backslashreplace")


def json_response(obj: Any, status: int = 200, *, sort_keys: bool = False,
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(compact_json(obj, sort_keys), status, headers=headers,
                    media_type="application/json")


def encode_event(obj: Any, sort_keys: bool = False) -> bytes:
    """One `data:` event."""
    return b"data: " + compact_json(obj, sort_keys) + b"\n\n"


class Streamed(Protocol):
    """The live request a stream is about (server/request/generation.py's Generation)."""

    request_id: str

    def disconnected(self) -> None: ...

    def hand_on(self) -> AbstractAsyncContextManager[Any]: ...


class EventWriter(Protocol[Item]):
    """One route family's events for the deltas of one request."""

    def head(self) -> list[bytes]:
        """Events before the first delta's."""

    def event(self, item: Item) -> bytes | None:
        """The event of one delta (None: nothing to send for it); an ApiError for the first
        delta is answered as a JSON error, for a later one with `error`."""

    def tail(self) -> list[bytes]:
        """Events after the last delta's."""

    def error(self, err: ApiError) -> list[bytes]:
        """Events that end a stream whose request failed after its first output."""


async def sse_response(request: Request, gen: Streamed, items: AsyncGenerator[T, None],
                       writer: EventWriter[T], headers: Mapping[str, str] | None = None
                       ) -> Response:
    """Wait for the first item and its events, then stream every item as events. What fails
    before (`items` or the first event raising) propagates, for the caller to answer as JSON
    (the caller's `async with gen` ends the request); once streaming, the response holds the
    request (handed on) until its last byte."""
    try:
        async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
            first = await anext(items)
        opening = [*writer.head(), writer.event(first)]
    except BaseException:
        await items.aclose()
        raise
    return HeldStreamingResponse(gen.hand_on(), _events(request, gen, opening, items, writer),
                                 media_type=SSE_MEDIA, headers={**SSE_HEADERS, **(headers or {})})


async def _events(request: Request, gen: Streamed, opening: list[bytes | None],
                  rest: AsyncGenerator[T, None], writer: EventWriter[T]) -> AsyncIterator[bytes]:
    try:
        async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
            for chunk in opening:
                if chunk:
                    yield chunk
            try:
                async for item in rest:
                    chunk = writer.event(item)
                    if chunk:
                        yield chunk
            except ApiError as err:
                logger.info("[%s] error mid-stream: %s", gen.request_id, err.message)
                for chunk in writer.error(err):
                    yield chunk
                return
            for chunk in writer.tail():
                yield chunk
    finally:
        await rest.aclose()
