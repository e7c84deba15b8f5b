"""Host-path ceiling: the real server over an instant executor, before/after in one run.

Starts bench/host_path_server.py once per source tree (this tree as `new`, `--server-src DIR` as
`base`, e.g. `git worktree add /tmp/h11-base 6e60b69`), then runs closed-loop streaming load on
both routes at each concurrency, alternating the servers round by round (ABBA), and reports per
cell the median output tok/s, TTFT p50/p99, dropped streams, and the event-loop thread's time per
engine step split into scheduler / publish / detokenize / serialize / http+write / route /
metrics (a stack sampler in the server process; see host_path_server.py).

    .venv/bin/python bench/host_path.py --server-src /tmp/h11-base --rounds 3 \
        --out bench/results/host_path_2core.md
    # a 16-core host: more client processes so the client is not the bottleneck
    .venv/bin/python bench/host_path.py --client-procs 4 --out bench/results/host_path_gpu_host.md
    # this tree in one process and split (--api-server-count 1, 2, 4), one report
    .venv/bin/python bench/host_path.py --api-server-counts 0,1,2,4 --rounds 1 --budget-s 300

Every step has a time limit: server start (--ready-timeout-s), each cell (--cell-timeout-s),
the whole load (--budget-s: cells not started by then are left out of the report); only the
server processes this script started are stopped (their own children die with them).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from host_path_client import LoadResult, run_load, run_load_httpx  # noqa: E402

from loadgen.client import make_endpoint  # noqa: E402
from loadgen.dataset import BenchPrompt  # noqa: E402

logger = logging.getLogger("host_path")

ENGINE_PID = __import__("re").compile(r"engine core pid (\d+)")
ROUTES = {"triton": "ensemble", "openai-completions": "smollm2-135m-instruct"}
CATEGORIES = ("scheduler", "publish", "detokenize", "serialize", "http/write", "middleware",
              "route", "metrics", "other", "loop")


class Server:
    def __init__(self, label: str, src: Path, port: int, extra: str) -> None:
        self.label, self.src, self.port, self.extra = label, src, port, extra
        self.ctl = Path(f"/tmp/host-path-{os.getpid()}-{label}")
        self.log_path = self.ctl.with_suffix(".log")
        self.ctl.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "bench" / "host_path_server.py"), "--port", str(port),
               "--ctl-dir", str(self.ctl), "--extra", extra]
        env = dict(os.environ, PYTHONPATH=str(src))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited: {self.log_path.read_text()[-3000:]}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.label} not ready")

    def control(self, name: str) -> None:
        (self.ctl / name).touch()

    def profile(self) -> dict[str, Any]:
        path = self.ctl / "profile.json"
        path.unlink(missing_ok=True)
        self.control("dump")
        for _ in range(100):
            if path.exists():
                return json.loads(path.read_text())
            time.sleep(0.05)
        return {}

    def cpu_s(self) -> float:
        """User + system CPU seconds so far of the server and its live child processes."""
        return sum(_cpu_s(pid) for pid in _tree(self.proc.pid))

    def engine_cpu_s(self) -> float:
        """The engine-core process's CPU seconds (split servers; nan in one process)."""
        match = ENGINE_PID.search(self.log_path.read_text(errors="replace"))
        return _cpu_s(int(match.group(1))) if match else float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # a split server's children die with it (PR_SET_PDEATHSIG)
            self.proc.wait(10)
        self._log.close()


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            try:
                pids += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
        i += 1
    return pids


def _client_proc(args: tuple[int, str, str, BenchPrompt, int, int, str]) -> LoadResult:
    port, route, model, prompt, conc, n, kind = args
    load = run_load_httpx if kind == "httpx" else run_load
    return asyncio.run(load("127.0.0.1", port, make_endpoint(route, model), prompt, conc, n))


def run_cell(pool: Any, server: Server, route: str, prompt: BenchPrompt, conc: int,
             requests: int, procs: int, client: str, timeout: float) -> dict[str, Any]:
    server.control("reset")
    time.sleep(0.2)
    cpu0, client0, engine0 = server.cpu_s(), time.process_time(), server.engine_cpu_s()
    shares = [(server.port, route, ROUTES[route], prompt, conc // procs + (i < conc % procs),
               requests // procs + (i < requests % procs), client) for i in range(procs)]
    if procs > 1:
        results = pool.map_async(_client_proc, shares).get(timeout)
    else:
        results = [_client_proc(shares[0])]
    server_cpu, client_cpu = server.cpu_s() - cpu0, time.process_time() - client0
    engine_cpu = server.engine_cpu_s() - engine0
    prof = server.profile()
    ttft = sorted(t for r in results for t in r.ttft_s)
    wall = max(r.wall_s for r in results)
    tokens = sum(r.tokens for r in results)
    return {"tok_s": tokens / wall if wall else 0.0, "ok": sum(r.ok for r in results),
            "short": sum(r.short for r in results),
            "dropped": [d for r in results for d in r.dropped],
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99), "profile": prof,
            "server_cpu": server_cpu / wall if wall else 0.0,
            "engine_cpu": engine_cpu / wall if wall else 0.0,
            "client_cpu": client_cpu / wall if wall and procs == 1 else float("nan")}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def split_us(prof: dict[str, Any]) -> dict[str, float]:
    """Event-loop thread microseconds per engine step, by category."""
    counts, steps = prof.get("counts", {}), prof.get("steps", 0)
    total = sum(counts.values())
    if not total or not steps:
        return {}
    per_sample = prof["wall_s"] / total / steps * 1e6
    return {c: counts.get(c, 0) * per_sample for c in CATEGORIES}


def _prompt(tokens: int, output: int) -> BenchPrompt:
    return BenchPrompt(prompt=" ".join(["the"] * tokens), input_len=tokens, output_len=output)


def _cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(route, c) for route in args.routes.split(",")
            for c in (int(x) for x in args.concurrency.split(","))]


def run_all(args: argparse.Namespace, servers: list[Server]) -> dict[tuple[str, str, int], list]:
    prompt = _prompt(args.prompt_tokens, args.output_tokens)
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    pool = multiprocessing.Pool(args.client_procs) if args.client_procs > 1 else None
    deadline = time.monotonic() + (args.budget_s or 1e9)
    try:
        for rnd in range(args.rounds):
            for route, conc in _cells(args):
                order = servers if rnd % 2 == 0 else servers[::-1]
                if time.monotonic() > deadline:
                    logger.warning("--budget-s spent: round %d %s c%d left out", rnd, route, conc)
                    continue
                for server in order:
                    n = max(args.min_requests, args.requests_per_stream * conc)
                    cell = run_cell(pool, server, route, prompt, conc, n, args.client_procs,
                                    args.client, args.cell_timeout_s)
                    runs.setdefault((server.label, route, conc), []).append(cell)
                    logger.warning("round %d %-5s %-18s c%-4d %8.0f tok/s ttft p99 %.3fs "
                                   "dropped %d short %d cpu server %.0f%% client %.0f%%", rnd,
                                   server.label, route, conc, cell["tok_s"], cell["ttft_p99"],
                                   len(cell["dropped"]), cell["short"],
                                   100 * cell["server_cpu"], 100 * cell["client_cpu"])
    finally:
        if pool is not None:
            pool.terminate()
    return runs


def _median(cells: list[dict[str, Any]], key: str) -> float:
    return statistics.median(c[key] for c in cells)


def _split_median(cells: list[dict[str, Any]]) -> dict[str, float]:
    splits = [split_us(c["profile"]) for c in cells]
    splits = [s for s in splits if s]
    return {k: statistics.median(s[k] for s in splits) for k in CATEGORIES} if splits else {}


def report(args: argparse.Namespace, servers: list[Server], runs: dict) -> str:
    labels = [s.label for s in servers]
    lines = [f"# Host-path ceiling (bench/host_path.py), {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
             "", f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
             f"Python {platform.python_version()}",
             f"- command: `{' '.join(sys.argv)}`",
             "- servers: " + ", ".join(f"{s.label} = {s.src}" for s in servers),
             f"- load: {args.prompt_tokens} prompt / {args.output_tokens} output tokens, closed "
             f"loop, {args.rounds} rounds alternating the servers, {args.client_procs} {args.client} "
             "client process(es); medians over rounds", ""]
    lines += ["| route | conc | " + " | ".join(f"{lb} tok/s" for lb in labels)
              + (f" | {labels[1]}/{labels[0]}" if len(labels) == 2 else "") + " | "
              + " | ".join(f"{lb} TTFT p50/p99 s" for lb in labels) + " | "
              + " | ".join(f"{lb} dropped/short" for lb in labels) + " | "
              + " | ".join(f"{lb} CPU server (engine)/client" for lb in labels) + " |"]
    lines.append("|" + "---|" * (2 + 4 * len(labels) + (len(labels) == 2)))
    for route, conc in _cells(args):
        if any((lb, route, conc) not in runs for lb in labels):
            continue  # left out (--budget-s)
        cells = [runs[(lb, route, conc)] for lb in labels]
        tps = [_median(c, "tok_s") for c in cells]
        many = len(labels) > 2 and tps[0]
        row = [route, str(conc), *(f"{t:,.0f}" + (f" ({t / tps[0]:.2f}x)" if many else "")
                                   for t in tps)]
        if len(labels) == 2:
            row.append(f"{tps[1] / tps[0]:.2f}x" if tps[0] else "-")
        row += [f"{_median(c, 'ttft_p50'):.3f} / {_median(c, 'ttft_p99'):.3f}" for c in cells]
        row += [f"{sum(len(x['dropped']) for x in c)} / {sum(x['short'] for x in c)}"
                for c in cells]
        row += [f"{_median(c, 'server_cpu'):.0%} ({_median(c, 'engine_cpu'):.0%}) / "
                f"{_median(c, 'client_cpu'):.0%}" for c in cells]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Event-loop thread time per engine step (us, median over rounds; split "
              "servers: the engine-core process's thread):", "",
              "| server | route | conc | " + " | ".join(CATEGORIES) + " |",
              "|" + "---|" * (3 + len(CATEGORIES))]
    for route, conc in _cells(args):
        for lb in labels:
            if (lb, route, conc) not in runs:
                continue
            s = _split_median(runs[(lb, route, conc)])
            lines.append(f"| {lb} | {route} | {conc} | "
                         + " | ".join(f"{s.get(k, 0):.0f}" for k in CATEGORIES) + " |")
    drops = sorted({d for cells in runs.values() for c in cells for d in c["dropped"]})
    if drops:
        lines += ["", "Dropped stream messages (distinct):", ""] + [f"- `{d}`" for d in drops[:20]]
    return "\n".join(lines) + "\n"


def _trees(args: argparse.Namespace) -> list[tuple[str, Path, str]]:
    """(label, source tree, settings JSON) of each server to start."""
    trees = []
    if args.server_src is not None:
        trees.append((args.base_label, args.server_src.resolve(), args.server_extra))
    if args.only_base:
        return trees
    counts = [int(c) for c in args.api_server_counts.split(",") if c.strip()]
    if not counts:
        return [*trees, ("new", ROOT, args.server_extra)]
    for n in counts:
        extra = {**json.loads(args.server_extra), "api_server_count": n}
        trees.append(("inproc" if n == 0 else f"split{n}", ROOT, json.dumps(extra)))
    return trees


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server-src", type=Path, help="baseline source tree (e.g. a worktree of the "
                   "parent commit); measured as `base`, alternating with this tree (`new`)")
    p.add_argument("--base-label", default="base", help="name of --server-src in the report")
    p.add_argument("--only-base", action="store_true", help="measure only --server-src")
    p.add_argument("--routes", default="triton,openai-completions", help="comma-separated")
    p.add_argument("--concurrency", default="16,64,256", help="comma-separated levels")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (words)")
    p.add_argument("--output-tokens", type=int, default=128, help="forced output length")
    p.add_argument("--requests-per-stream", type=int, default=2, help="requests = this x conc")
    p.add_argument("--min-requests", type=int, default=64, help="at least this many requests")
    p.add_argument("--client-procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw", help="raw: a lean "
                   "socket client (the least client CPU); httpx: the project's load generator")
    p.add_argument("--port", type=int, default=23800 + os.getpid() % 1000, help="first port")
    p.add_argument("--server-extra", default="{}", help="JSON of extra ServerSettings fields")
    p.add_argument("--api-server-counts", default="", help="comma-separated; this tree once "
                   "per value: 0 = one process (`inproc`), N = engine process + N front ends "
                   "(`splitN`); empty = this tree with its defaults (`new`)")
    p.add_argument("--budget-s", type=float, default=0.0, help="stop starting cells after "
                   "this many seconds of load (0 = no limit)")
    p.add_argument("--cell-timeout-s", type=float, default=120.0, help="one cell at most")
    p.add_argument("--ready-timeout-s", type=float, default=180.0, help="server start at most")
    p.add_argument("--out", type=Path, help="markdown results file")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    # an outer `timeout` (SIGTERM) still stops the servers started here (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    servers: list[Server] = []
    try:
        for i, (lb, src, extra) in enumerate(_trees(args)):
            servers.append(Server(lb, src, args.port + 2 * i, extra))
        for s in servers:
            s.wait_ready(args.ready_timeout_s)
        runs = run_all(args, servers)
    finally:
        for s in servers:
            s.stop()
    text = report(args, servers, runs)
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
