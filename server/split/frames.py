"""The wire between the engine-core process and the HTTP front ends (`--api-server-count`).

A unix-domain stream socket private to one server (its directory is mode 0700). Each frame is a
4-byte big-endian length and a pickled list of messages; both sides batch: a front end sends one
frame per event-loop iteration with every add/abort/metrics record of that iteration, the engine
one frame per front end per step with every output of that step. Pickle is safe here because
only this server's own processes can open the socket, and it is the cheapest codec measured for
the tuples and lists that cross (docs/host-path.md).

Messages are tuples whose first item names them:
front end -> engine: ("add", Request), ("abort", request_id), ("in_flight", model, count),
    ("finished", RequestRecord), ("metrics", query_id)
engine -> front end: ("hello", EngineInfo), ("step", [output tuple...], stats | None,
    num_unfinished), ("reply", query_id, payload), ("dead", reason)
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from scheduler.request import ErrorKind, FinishReason, RequestOutput

logger = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30
PROTOCOL = pickle.HIGHEST_PROTOCOL
OutputTuple = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a front end needs to serve the engine's model (sent once, in "hello")."""

    name: str
    aliases: tuple[str, ...]
    backend: str
    max_context: int
    max_batch_size: int
    max_queue_size: int
    tokenizer: Any  # the engine's tokenizer object, pickled
    limits: tuple[int, int, int] | None  # (max_model_len, vocab_size, kv tokens) to pre-check


def encode(messages: list[tuple[Any, ...]]) -> bytes:
    body = pickle.dumps(messages, PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[tuple[Any, ...]] | None:
    """The next frame's messages; None at end of stream (the peer closed or died)."""
    try:
        head = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"IPC frame of {size} bytes")
        messages: list[tuple[Any, ...]] = pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return messages


def output_tuple(out: RequestOutput) -> OutputTuple:
    return (out.request_id, out.new_token_ids, out.new_logprobs, out.finished,
            None if out.finish_reason is None else str(out.finish_reason),
            out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens, out.error,
            None if out.error_type is None else str(out.error_type), out.new_top_logprobs)


def output_from(t: OutputTuple) -> RequestOutput:
    reason, kind = t[4], t[9]
    return RequestOutput(t[0], t[1], t[2], t[3], None if reason is None else FinishReason(reason),
                         t[5], t[6], t[7], t[8], None if kind is None else ErrorKind(kind), t[10])


def error_output(request_id: str, error: str, kind: ErrorKind) -> RequestOutput:
    """A request that ends here with ERROR: an add the engine refused, or a lost engine."""
    return RequestOutput(request_id, finished=True, finish_reason=FinishReason.ERROR,
                         error=error, error_type=kind)


class FrameWriter:
    """Queues messages and writes them as one frame at the end of this event-loop iteration."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[tuple[Any, ...]] = []
        self._scheduled = False
        self.closed = False

    def send(self, message: tuple[Any, ...]) -> None:
        if self.closed:
            return
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending or self.closed:
            return
        messages, self._pending = self._pending, []
        try:
            self._writer.write(encode(messages))
        except (ConnectionError, RuntimeError) as exc:
            logger.warning("IPC write failed: %s", exc)
            self.closed = True

    def close(self) -> None:
        self.flush()
        self.closed = True
        self._writer.close()
