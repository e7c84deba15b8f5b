"""Start the real `trtserve serve` process on free 127.0.0.1 ports and wait until it is ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
TRTSERVE = [sys.executable, "-m", "server.cli", "serve"]
READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProc:
    def __init__(self, *args: str, log_name: str = "server") -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = tmp / f"trtserve-e2e-{log_name}-{self.port}.log"
        cmd = [*TRTSERVE, "--host", "127.0.0.1", "--port", str(self.port),
               "--metrics-port", str(self.metrics_port), "--kv-cache-blocks", "256", *args]
        self.live_before_ready = False  # liveness 200 was seen while readiness was 503
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
                if httpx.get(self.url + "/v2/health/live", timeout=2).status_code == 200:
                    self.live_before_ready = True
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready in {READY_TIMEOUT_S}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextmanager
def running_server(*args: str, log_name: str = "server") -> Iterator[ServerProc]:
    """A ready server for the duration of the block (fixtures yield from this)."""
    proc = ServerProc(*args, log_name=log_name)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
