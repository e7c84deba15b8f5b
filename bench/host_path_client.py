"""Closed-loop streaming load for bench/host_path.py: a lean raw-socket HTTP/1.1 client.

The request bodies are the project load generator's (loadgen/client.py endpoints: Triton
generate_stream with min_tokens = max_tokens, OpenAI /v1/completions with ignore_eos). The
transport is a few lines of asyncio streams instead of httpx, so that on a 2-core box the client
costs the server as little CPU as possible: it reads the chunked body, splits SSE events on blank
lines, and counts output tokens by counting the instant model's token text in the raw bytes.
Each `workers` coroutine keeps one keep-alive connection and sends its next request as soon as
the previous stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from loadgen.client import Endpoint

logger = logging.getLogger(__name__)

MARK = b"hello"  # the instant executor's token text, as it appears in every event
REQUEST_TIMEOUT_S = 60.0  # a stream not finished by then counts as dropped


@dataclass(slots=True)
class LoadResult:
    ok: int = 0
    tokens: int = 0
    short: int = 0  # streams that ended cleanly with fewer tokens than asked for
    dropped: list[str] = field(default_factory=list)  # "kind: message" per failed stream
    ttft_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20)
        assert self.reader is not None
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def _request_bytes(host: str, port: int, path: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_stream(reader: asyncio.StreamReader, start: float
                       ) -> tuple[int, bytes, float | None, bool]:
    """(status, raw event bytes, ttft, keep-alive) of one chunked (or sized) response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    keep = b"connection: close" not in lower
    if b"transfer-encoding: chunked" not in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return status, await reader.readexactly(length), None, keep
    parts: list[bytes] = []
    ttft = None
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts), ttft, keep
        data = (await reader.readexactly(size + 2))[:-2]
        if ttft is None and MARK in data:
            ttft = time.perf_counter() - start
        parts.append(data)


async def _one(conn: _Conn, request: bytes, endpoint: Endpoint, want: int,
               result: LoadResult) -> None:
    start = time.perf_counter()
    try:
        reader, writer = await conn.ensure()
        writer.write(request)
        status, raw, ttft, keep = await asyncio.wait_for(_read_stream(reader, start),
                                                         REQUEST_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
            TimeoutError) as exc:
        conn.close()
        result.dropped.append(f"{type(exc).__name__}: {exc}"[:200])
        return
    if not keep:
        conn.close()
    if status != 200 or b'"error"' in raw or (endpoint.needs_done and b"[DONE]" not in raw):
        result.dropped.append(f"http {status}: {raw[-200:]!r}")
        return
    tokens = raw.count(MARK)
    result.ok += 1
    result.tokens += tokens
    result.short += tokens < want
    if ttft is not None:
        result.ttft_s.append(ttft)


async def run_load(host: str, port: int, endpoint: Endpoint, prompt: Any, concurrency: int,
                   requests: int) -> LoadResult:
    """`requests` streams over `concurrency` closed-loop workers."""
    result = LoadResult()
    request = _request_bytes(host, port, endpoint.path(), endpoint.payload(prompt))
    left = [requests]

    async def worker() -> None:
        conn = _Conn(host, port)
        try:
            while left[0] > 0:
                left[0] -= 1
                await _one(conn, request, endpoint, prompt.output_len, result)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - t0
    return result


async def run_load_httpx(host: str, port: int, endpoint: Endpoint, prompt: Any,
                         concurrency: int, requests: int, timeout_s: float = 600.0
                         ) -> LoadResult:
    """The same load through the project's load generator (loadgen: httpx, SSE parser)."""
    from loadgen.generator import make_client, run_closed_loop

    result = LoadResult()
    t0 = time.perf_counter()
    async with make_client(f"http://{host}:{port}", concurrency, timeout_s) as client:
        runs = await run_closed_loop(client, endpoint, [prompt] * requests, concurrency,
                                     timeout_s)
    result.wall_s = time.perf_counter() - t0
    for r in runs:
        if not r.ok:
            result.dropped.append(f"{r.error_kind}: {r.error}"[:200])
            continue
        tokens = r.text.count(MARK.decode())
        result.ok += 1
        result.tokens += tokens
        result.short += tokens < prompt.output_len
        if r.ttft_s is not None:
            result.ttft_s.append(r.ttft_s)
    return result
