"""`--api-server-count N`: the engine loop in its own process, N HTTP front ends on the same
ports. Real processes, real HTTP, the real EngineLoop + Scheduler over the scripted executor
(tests/server/split_server.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = "Hello from the scripted engine."
PIDS = re.compile(r"engine core pid (\d+); (\d+) HTTP front ends, pids ([\d ]+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Split:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int, mport: int) -> None:
        self.proc, self.log_path, self.port, self.mport = proc, log, port, mport
        self.url = f"http://127.0.0.1:{port}"
        self.engine_pid = 0
        self.frontend_pids: list[int] = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            match = PIDS.search(self.log())
            try:
                if match and httpx.get(self.url + "/v2/health/ready", timeout=2).status_code \
                        == 200:
                    self.engine_pid = int(match.group(1))
                    self.frontend_pids = [int(p) for p in match.group(3).split()]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log())

    def children_alive(self) -> list[int]:
        return [p for p in (self.engine_pid, *self.frontend_pids) if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def split_server(*args: str, env: dict[str, str] | None = None, step_s: float = 0.0
                 ) -> Iterator[Split]:
    port, mport = _free_port(), _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"trtserve-split-{port}.log"
    cmd = [sys.executable, str(HERE / "split_server.py"), "--host", "127.0.0.1", "--port",
           str(port), "--metrics-port", str(mport), "--step-s", str(step_s), "--script", SCRIPT,
           "--drain-timeout", "20", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    server = Split(proc, log, port, mport)
    try:
        server.wait_ready()
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in server.children_alive():  # only this test's own processes
            os.kill(pid, signal.SIGKILL)


def _triton_body(max_tokens: int) -> dict[str, object]:
    return {"text_input": "hi", "max_tokens": max_tokens, "stream": True}


async def _triton_stream(url: str, max_tokens: int, started: list[int] | None = None) -> str:
    """The streamed text; `started` gets an item once the first event arrived."""
    async with httpx.AsyncClient(timeout=30) as c, c.stream(
            "POST", url + "/v2/models/ensemble/generate_stream",
            json=_triton_body(max_tokens)) as r:
        assert r.status_code == 200, await r.aread()
        text = ""
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                if started is not None and not text:
                    started.append(1)
                text += json.loads(line[6:])["text_output"]
        return text


async def _openai_stream(url: str, max_tokens: int) -> tuple[str, str]:
    """(response id, text) of one streamed completion on its own connection."""
    body = {"model": "fake-model", "prompt": "hi", "max_tokens": max_tokens, "stream": True}
    async with httpx.AsyncClient(timeout=30) as c, c.stream(
            "POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        rid, text, done = "", "", False
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                assert "id" in chunk, chunk
                rid, text = chunk["id"], text + chunk["choices"][0]["text"]
        assert done
        return rid, text


def test_streams_from_several_front_ends_are_complete_and_spread() -> None:
    n = len(SCRIPT)
    with split_server("--api-server-count", "2", step_s=0.005) as srv:
        assert len(srv.frontend_pids) == 2 and len(srv.children_alive()) == 3

        async def burst() -> tuple[list[str], list[tuple[str, str]]]:
            triton = [_triton_stream(srv.url, n) for _ in range(8)]
            openai = [_openai_stream(srv.url, n) for _ in range(8)]
            got = await asyncio.gather(*triton, *openai)
            return got[:8], got[8:]  # type: ignore[return-value]

        served_by: set[str] = set()
        for _ in range(10):  # the kernel picks the accepting process: repeat until both did
            texts, completions = asyncio.run(burst())
            assert texts == [SCRIPT] * 8
            assert [t for _, t in completions] == [SCRIPT] * 8
            # the per-request log line names the request id, prefixed with its front end
            served_by = set(re.findall(r"request ([0-9a-f]{2})[0-9a-f]{30} POST", srv.log()))
            if len(served_by) == 2:
                break
        assert served_by == {"00", "01"}, "every request was served by one front end"


def _stats(url: str) -> dict[str, int]:
    return httpx.get(url + "/v2/trtserve/stats", timeout=5).json()["scheduler"]


def _in_flight(url: str) -> float:
    """The engine's in-flight gauge: the sum of what each front end's registry counts."""
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r'^trtserve_requests_in_flight\{model="ensemble"\} (\S+)$', text, re.M)
    assert m, text[:2000]
    return float(m.group(1))


def test_client_disconnect_in_a_front_end_frees_the_engines_blocks() -> None:
    with split_server("--api-server-count", "2", step_s=0.02) as srv:
        async def stream_then_leave() -> tuple[dict[str, int], float]:
            async with httpx.AsyncClient(timeout=30) as c, c.stream(
                    "POST", srv.url + "/v2/models/ensemble/generate_stream",
                    json=_triton_body(400)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):  # streaming: the engine holds its blocks
                        return (await asyncio.to_thread(_stats, srv.url),
                                await asyncio.to_thread(_in_flight, srv.url))
                raise AssertionError("no event")

        busy, in_flight = asyncio.run(stream_then_leave())  # the client has closed its connection
        assert busy["blocks_used"] > 0 and busy["num_running"] == 1, busy
        assert in_flight == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = _stats(srv.url)
            if s["blocks_used"] == 0 and s["num_running"] == 0:
                break
            time.sleep(0.05)
        assert s["blocks_used"] == 0 and s["num_running"] == 0, s
        assert s["step_id"] < 300  # aborted well before its 400 tokens
        assert re.search(r"request 0[01][0-9a-f]{30} POST \S+ model=ensemble .* "
                         r"finish=CANCELED", srv.log())
        deadline = time.monotonic() + 5  # the front end's count travels after its log line
        while _in_flight(srv.url) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _in_flight(srv.url) == 0


def test_sigterm_drains_in_flight_requests_and_every_process_exits() -> None:
    with split_server(env={"TRTSERVE_API_SERVER_COUNT": "3"}, step_s=0.01) as srv:
        assert len(srv.frontend_pids) == 3

        async def run() -> list[str]:
            started: list[int] = []
            tasks = [asyncio.create_task(_triton_stream(srv.url, 100, started))
                     for _ in range(6)]
            deadline = time.monotonic() + 30
            while len(started) < 6 and time.monotonic() < deadline:  # all streaming
                await asyncio.sleep(0.01)
            assert len(started) == 6
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

        texts = asyncio.run(run())
        assert all(t.startswith(SCRIPT) and len(t) == 100 for t in texts)  # none cut short
        assert srv.proc.wait(30) == 0, srv.log()
        time.sleep(0.2)
        assert srv.children_alive() == []
        assert srv.log().count("draining (readiness now 503)") == 3


def test_engine_process_death_makes_front_ends_not_ready_and_the_server_exit_1() -> None:
    with split_server("--api-server-count", "2", step_s=0.01) as srv:
        os.kill(srv.engine_pid, signal.SIGKILL)
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while srv.proc.poll() is None and time.monotonic() < deadline:
            try:
                seen.add(httpx.get(srv.url + "/v2/health/ready", timeout=1).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        assert srv.proc.wait(30) == 1, srv.log()
        assert 503 in seen, seen
        assert srv.log().count("engine dead:") == 2  # each front end went not-ready
        time.sleep(0.2)
        assert srv.children_alive() == []


def test_a_dead_front_end_shuts_the_server_down() -> None:
    with split_server("--api-server-count", "2") as srv:
        os.kill(srv.frontend_pids[1], signal.SIGKILL)
        assert srv.proc.wait(30) == 1, srv.log()
        assert "front end 1" in srv.log() and "shutting the server down" in srv.log()
        time.sleep(0.2)
        assert srv.children_alive() == []


def _success(text: str) -> float:
    m = re.search(r'^nv_inference_request_success\{model="ensemble",version="1"\} (\S+)$',
                  text, re.M)
    assert m, text[:2000]
    return float(m.group(1))


def test_metrics_totals_agree_whichever_process_answers() -> None:
    with split_server("--api-server-count", "2", step_s=0.002) as srv:
        async def many() -> None:
            await asyncio.gather(*(_triton_stream(srv.url, 5) for _ in range(12)))

        asyncio.run(many())
        time.sleep(0.3)  # the last records travel to the engine after the last byte
        values = set()
        for url in (srv.url, f"http://127.0.0.1:{srv.mport}") * 4:
            with httpx.Client(timeout=5) as c:  # a new connection: any front end may answer
                r = c.get(url + "/metrics")
            assert r.status_code == 200
            values.add(_success(r.text))
        assert values == {12.0}


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_api_server_count_is_refused(value: str) -> None:
    cmd = [sys.executable, "-m", "server.cli", "serve", "--api-server-count", value]
    proc = subprocess.run(cmd, cwd=HERE.parents[1], capture_output=True, timeout=60)
    assert proc.returncode == 2
