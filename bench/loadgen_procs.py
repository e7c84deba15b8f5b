"""`trtserve bench --client-procs`: one client process against several, same server, same run.

Starts bench/host_path_server.py (the real server over an instant executor, so the client is
the part under test) on 127.0.0.1, then runs `trtserve bench` (as `python -m server.cli bench`)
for every concurrency, alternating the process counts within each round (the order flips every
round), and writes medians and ratios to a Markdown file:

    python bench/loadgen_procs.py --procs 1,2 --concurrency 64,256 --rounds 3 \
        --out bench/results/loadgen_procs.md

Every step runs under a timeout; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("loadgen_procs")

BENCH_TIMEOUT_S = 600
READY_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, ctl: Path, extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(ROOT / "bench" / "host_path_server.py"), "--port", str(port),
           "--ctl-dir", str(ctl), "--extra", extra]
    log = (ctl / "server.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((ctl / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("server not ready")


def bench_once(args: argparse.Namespace, port: int, conc: int, procs: int,
               out: Path) -> dict[str, Any]:
    """One `trtserve bench` run; its report plus the CPU seconds the client used."""
    cmd = [sys.executable, "-m", "server.cli", "bench", "--url", f"http://127.0.0.1:{port}",
           "--concurrency", str(conc), "--num-prompts", str(args.prompts_per_stream * conc),
           "--input-len", str(args.input_len), "--output-len", str(args.output_len),
           "--client-procs", str(procs), "--no-progress", "--output-json", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=BENCH_TIMEOUT_S,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (run,) = json.loads(out.read_text())["runs"]
    run["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return dict(run)


def _row(conc: int, procs: int, runs: list[dict[str, Any]], base: float) -> str:
    tok = statistics.median(r["output_throughput"] for r in runs)
    ttft = statistics.median(r["ttft_ms"]["p50"] for r in runs)
    itl = statistics.median(r["itl_ms"]["p50"] for r in runs)
    cpu = statistics.median(r["client_cpu_s"] for r in runs)
    failed = sum(r["failed"] for r in runs)
    each = ", ".join(f"{r['output_throughput']:,.0f}" for r in runs)
    return (f"| {conc} | {procs} | {tok:,.0f} | {tok / base:.2f}x | {ttft:,.1f} | {itl:,.2f} "
            f"| {cpu:.1f} | {failed} | {each} |")


def report(args: argparse.Namespace, results: dict[tuple[int, int], list[dict[str, Any]]],
           load: tuple[float, float]) -> str:
    lines = [
        "# `trtserve bench --client-procs`: one client process vs several", "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- command: `python bench/loadgen_procs.py {' '.join(sys.argv[1:])}`",
        f"- server: bench/host_path_server.py (real server, instant executor), "
        f"extra settings {args.extra}; input {args.input_len}, output {args.output_len} "
        f"tokens, {args.prompts_per_stream} prompts per stream",
        f"- load average before / after: {load[0]:.1f} / {load[1]:.1f} "
        "(the box is shared with other jobs: numbers are noisy; A/B alternate within rounds)",
        "", "| conc | procs | out tok/s (median) | vs 1 proc | TTFT p50 ms | ITL p50 ms "
        "| client CPU s | failed | each round tok/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for conc in args.concurrency:
        base = statistics.median(r["output_throughput"] for r in results[(conc, args.procs[0])])
        lines += [_row(conc, p, results[(conc, p)], base) for p in args.procs]
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=_ints, default=[1, 2], help="client process counts")
    p.add_argument("--concurrency", type=_ints, default=[64, 256])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts-per-stream", type=int, default=2)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--extra", default="{}", help="JSON of further ServerSettings fields")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loadgen_procs.md")
    args = p.parse_args()
    port = _free_port()
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="loadgen-procs-") as tmp:
        server = start_server(port, Path(tmp), args.extra)
        try:
            for rnd in range(args.rounds):
                order = args.procs if rnd % 2 == 0 else args.procs[::-1]
                for conc in args.concurrency:
                    for procs in order:
                        run = bench_once(args, port, conc, procs, Path(tmp) / "run.json")
                        logger.info("round %d c%d procs %d: %.0f tok/s, ttft p50 %.1f ms",
                                    rnd, conc, procs, run["output_throughput"],
                                    run["ttft_ms"]["p50"])
                        results.setdefault((conc, procs), []).append(run)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
    text = report(args, results, (load0, os.getloadavg()[0]))
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
