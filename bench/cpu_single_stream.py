"""One stream on the CPU through HTTP: trtserve `--cpu-precision exact` and `fast` beside
llama.cpp's llama-server on the same GGUF, and 16 streams of this tree against the parent
commit's, all in one run with the servers taking turns.

    bench/build_llama_server.sh                     # once: prints the llama-server path
    .venv/bin/python bench/cpu_single_stream.py --llama-server PATH \
        [--base-tree /tmp/h15-base] [--rounds 3]

Each round starts every server in turn (one at a time, order reversed every other round),
sends two warm-up requests, then runs `trtserve bench` (OpenAI completions, streaming, closed
loop, `--output-len` tokens with ignore_eos) and stops it. c1 servers: trtserve exact, trtserve
fast (with --one-thread also fast on one intra-op thread; with --base-tree also the base tree's
fast), llama-server (-t 2, -np 16, continuous batching: the issue's command). c16 servers (with
`--base-tree`): this tree's default precision and the tree at --base-tree (e.g.
`git archive <parent> | tar -x -C /tmp/h15-base`), both `--max-batch-size 16`.
Writes bench/results/cpu_single_stream.md (or --output): medians over rounds, ratios, the load (uptime)
before and after; the raw `trtserve bench` JSON of every run under --work-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.registry import DEFAULT_MODEL, resolve_model  # noqa: E402

logger = logging.getLogger(__name__)

RESULTS = ROOT / "bench" / "results" / "cpu_single_stream.md"
PYTHON = sys.executable


@dataclass(frozen=True, slots=True)
class Server:
    """How to start one server; `ready` is the path that answers 200 once it serves."""

    name: str
    argv: tuple[str, ...]
    cwd: Path
    ready: str
    concurrency: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cache_flag(tree: Path) -> str:
    """The graph-cache root's flag in `tree`: --cache-dir (--engine-dir before it was renamed,
    e.g. in the parent commit 6e60b69, where --engine-dir meant the cache root)."""
    return "--cache-dir" if "cache_dir" in (tree / "server" / "settings.py").read_text() \
        else "--engine-dir"


def trtserve(name: str, tree: Path, concurrency: int, cache_dir: str, *extra: str) -> Server:
    argv = (PYTHON, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--metrics-port", "0",
            cache_flag(tree), cache_dir, "--log-level", "warning", *extra)
    return Server(name, argv, tree, "/v2/health/ready", concurrency)


def llama_server(binary: str, gguf: Path, concurrency: int) -> Server:
    argv = (binary, "-m", str(gguf), "--host", "127.0.0.1", "-t", "2", "-np", "16",
            "--cont-batching", "--log-disable")
    return Server(f"llama-server c{concurrency}", argv, Path.cwd(), "/health", concurrency)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (127.0.0.1 only)
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running(server: Server, log: Path) -> Iterator[str]:
    """Starts `server` on a free port, waits until it is ready, yields its URL, stops it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(server.cwd)}
    with log.open("ab") as out:
        proc = subprocess.Popen([*server.argv, "--port", str(port)], cwd=server.cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while not _ready(url + server.ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, concurrency: int, prompts: int, args: argparse.Namespace,
         out: Path | None) -> dict:
    """One `trtserve bench` run (OpenAI completions, streaming, closed loop)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = out or Path(tmp) / "run.json"
        cmd = [PYTHON, "-m", "server.cli", "bench", "--url", url,
               "--endpoint", "openai-completions", "--model", DEFAULT_MODEL,
               "--concurrency", str(concurrency), "--num-prompts", str(prompts),
               "--input-len", str(args.input_len), "--output-len", str(args.output_len),
               "--seed", str(args.seed), "--output-json", str(path), "--no-progress"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return json.loads(path.read_text(encoding="utf-8"))["runs"][0]


def measure(server: Server, args: argparse.Namespace, tag: str) -> dict:
    prompts = args.c1_prompts if server.concurrency == 1 else args.c16_prompts
    with running(server, args.work_dir / "servers.log") as url:
        load(url, 1, 2, args, None)  # warm-up
        run = load(url, server.concurrency, prompts, args, args.work_dir / f"{tag}.json")
    if run["failed"]:
        raise RuntimeError(f"{server.name}: {run['failed']} failed requests: {run['errors']}")
    logger.warning("%s %s: %.1f tok/s, TPOT p50 %.1f ms", tag, server.name,
                   run["output_throughput"], run["tpot_ms"]["p50"])
    return run


def uptime() -> str:
    return Path("/proc/loadavg").read_text(encoding="ascii").strip()


def table(results: dict[str, list[dict]], ref: str) -> list[str]:
    lines = [f"| server | output tok/s per round | median tok/s | vs {ref} | TPOT p50 ms "
             "(median) | ITL p50 ms | TTFT p50 ms |", "|---|---|---|---|---|---|---|"]
    base = statistics.median(r["output_throughput"] for r in results[ref])
    for name, runs in results.items():
        tps = [r["output_throughput"] for r in runs]
        med = statistics.median(tps)
        lines.append(f"| {name} | {' / '.join(f'{t:.1f}' for t in tps)} | {med:.1f} | "
                     f"{med / base:.2f}x | "
                     f"{statistics.median(r['tpot_ms']['p50'] for r in runs):.1f} | "
                     f"{statistics.median(r['itl_ms']['p50'] for r in runs):.1f} | "
                     f"{statistics.median(r['ttft_ms']['p50'] for r in runs):.0f} |")
    return lines


def rounds(servers: list[Server], args: argparse.Namespace) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {s.name: [] for s in servers}
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else servers[::-1]:
            tag = f"r{r}-{server.name.replace(' ', '_')}"
            results[server.name].append(measure(server, args, tag))
    return results


def servers(args: argparse.Namespace) -> tuple[list[Server], list[Server]]:
    gguf = resolve_model(DEFAULT_MODEL).path
    eng = str(args.cache_dir)
    c1 = [trtserve("trtserve exact c1", ROOT, 1, eng, "--cpu-precision", "exact"),
          trtserve("trtserve fast c1", ROOT, 1, eng, "--cpu-precision", "fast")]
    if args.one_thread:
        c1.append(trtserve("trtserve fast c1, 1 thread", ROOT, 1, eng, "--cpu-precision", "fast",
                           "--cpu-threads", "1"))
    if args.base_tree:
        c1.append(trtserve("trtserve fast c1 (base tree)", args.base_tree, 1, eng,
                           "--cpu-precision", "fast"))
    if args.llama_server:
        c1.append(llama_server(args.llama_server, gguf, 1))
    c16 = []
    if args.base_tree:
        c16 = [trtserve("trtserve c16 (this tree, default)", ROOT, 16, eng,
                        "--max-batch-size", "16"),
               trtserve("trtserve c16 (base tree)", args.base_tree, 16, eng,
                        "--max-batch-size", "16")]
    return c1, c16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", default=None, help="llama-server binary (without: "
                        "trtserve only)")
    parser.add_argument("--base-tree", type=Path, default=None,
                        help="a checkout of the parent commit, for the c16 comparison")
    parser.add_argument("--one-thread", action="store_true",
                        help="also trtserve fast with --cpu-threads 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--c1-prompts", type=int, default=6)
    parser.add_argument("--c16-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/trtserve-bench-cache"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/trtserve-cpu-single"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    c1, c16 = servers(args)
    before, started = uptime(), datetime.datetime.now(datetime.UTC)
    res1 = rounds(c1, args)
    res16 = rounds(c16, args) if c16 else {}
    after = uptime()
    write(args, started, (before, after), res1, res16)


def write(args: argparse.Namespace, started: datetime.datetime, load_avg: tuple[str, str],
          res1: dict[str, list[dict]], res16: dict[str, list[dict]]) -> None:
    lines = [
        "# CPU: one stream through HTTP, trtserve exact / fast beside llama-server", "",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores visible, "
        f"python {platform.python_version()}; shared with other jobs: /proc/loadavg "
        f"before `{load_avg[0]}`, after `{load_avg[1]}`",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- load: `trtserve bench`, OpenAI completions, streaming, closed loop, input "
        f"{args.input_len} tokens, output {args.output_len} (ignore_eos), c1: "
        f"{args.c1_prompts} requests a round, c16: {args.c16_prompts}; {args.rounds} rounds, "
        "servers one at a time, order reversed every other round; two warm-up requests per "
        "server start", ""]
    lines += table(res1, "llama-server c1" if args.llama_server else "trtserve exact c1")
    if res16:
        lines += ["", *table(res16, "trtserve c16 (base tree)")]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sys.stdout.write(args.output.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
