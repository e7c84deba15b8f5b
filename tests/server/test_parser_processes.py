"""The request-parser processes die with the server process that started them, even when it is
SIGKILLed (no orphans holding memory after a front end crashes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent("""
    import time
    from server.request.prep import RequestPrep
    prep = RequestPrep(processes=2, threads=1)
    prep.warm()
    deadline = time.monotonic() + 120
    while not prep.processes_ready and time.monotonic() < deadline:
        time.sleep(0.05)
    print("ready" if prep.processes_ready else "not ready", flush=True)
    time.sleep(600)
""")


def _children(pid: int) -> set[int]:
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            out.add(int(status.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_parser_processes_die_with_a_killed_parent() -> None:
    with subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True) as proc:
        _kill_and_check(proc)


def _kill_and_check(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        workers = _children(proc.pid)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {w for w in workers if _alive(w)}
        for w in left:
            os.kill(w, signal.SIGKILL)
        assert left == set()
    finally:
        proc.kill()
