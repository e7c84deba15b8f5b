"""Connection timeouts over a real socket. --body-read-timeout: a stalled body gets 408 JSON and
a closed connection; a slow body inside the limit and a stream that outlives it are not affected.
--keep-alive-timeout: idle connections are closed after it, not before."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from fakes import MODEL, FakeEngine

from server.cli.main import build_parser
from server.cli.serve import serve, settings_from_args
from server.settings import ServerSettings

TIMEOUT_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(check: Callable[[int], Awaitable[None]], timeout: float = TIMEOUT_S,
         keep_alive: float = 60.0) -> None:
    settings = ServerSettings(model=MODEL, host="127.0.0.1", port=_free_port(),
                              metrics_port=0, log_level="warning", body_read_timeout=timeout,
                              keep_alive_timeout=keep_alive)

    async def main() -> None:
        task = asyncio.create_task(serve(settings, FakeEngine(step_s=0.05)))
        try:
            async with httpx.AsyncClient(timeout=5) as c:
                for _ in range(250):
                    try:
                        url = f"http://127.0.0.1:{settings.port}/v2/health/ready"
                        if (await c.get(url)).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.02)
            await check(settings.port)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the server's own drain-and-exit path
            assert await asyncio.wait_for(task, 20) == 0

    asyncio.run(main())


def _head(body_len: int) -> bytes:
    return (f"POST /v2/models/ensemble/generate HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n").encode()


def test_stalled_body_gets_408_and_the_connection_is_closed() -> None:
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_head(100) + b'{"text_inp')  # 10 of 100 declared bytes, then nothing
        await writer.drain()
        t0 = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF only
        elapsed = time.monotonic() - t0
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data
        assert b"connection: close" in head.lower()
        assert "not received within" in json.loads(body)["error"]
        assert TIMEOUT_S * 0.8 < elapsed < TIMEOUT_S + 2

    _run(check)


def test_slow_body_inside_the_limit_and_long_streams_are_served() -> None:
    async def check(port: int) -> None:
        body = json.dumps({"text_input": "hi", "max_tokens": 2}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_head(len(body)) + body[:5])
        await writer.drain()
        await asyncio.sleep(TIMEOUT_S / 3)
        writer.write(body[5:])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
        async with httpx.AsyncClient(timeout=10) as c:  # 20 steps of 50 ms: past the timeout
            t0 = time.monotonic()
            r = await c.post(f"http://127.0.0.1:{port}/v2/models/ensemble/generate_stream",
                             json={"text_input": "hi", "max_tokens": 20, "min_tokens": 20})
            assert time.monotonic() - t0 > TIMEOUT_S
        assert r.status_code == 200 and '"error"' not in r.text
        assert r.text.count("data: ") >= 1

    _run(check)


def test_body_read_timeout_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--body-read-timeout", "2.5"])
    assert settings_from_args(args).body_read_timeout == 2.5
    monkeypatch.setenv("TRTSERVE_BODY_READ_TIMEOUT", "0")
    assert settings_from_args(build_parser().parse_args(["serve"])).body_read_timeout == 0.0


async def _idle_then_request(port: int, idle_s: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    get = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(get)
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.sleep(idle_s)
    writer.write(get)
    try:
        return await asyncio.wait_for(reader.read(1 << 16), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def test_keep_alive_timeout_closes_idle_connections_only_after_it() -> None:
    async def check(port: int) -> None:
        assert (await _idle_then_request(port, 1.5)).startswith(b"HTTP/1.1 200")

    async def check_short(port: int) -> None:
        assert await _idle_then_request(port, 1.0) == b""  # closed by the server: EOF

    _run(check, keep_alive=3.0)
    _run(check_short, keep_alive=0.3)


def test_keep_alive_timeout_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--keep-alive-timeout", "7.5"])
    assert settings_from_args(args).keep_alive_timeout == 7.5
    monkeypatch.setenv("TRTSERVE_KEEP_ALIVE_TIMEOUT", "12")
    assert settings_from_args(build_parser().parse_args(["serve"])).keep_alive_timeout == 12.0
