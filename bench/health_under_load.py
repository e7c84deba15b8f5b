"""Liveness under a flood of huge bodies: /v2/health/live latency while clients post bodies just
under --max-body-bytes (a huge prompt, a huge chat, huge bad_words, a long tokenisable prompt).

Each of --clients threads loops over the four bodies on its own keep-alive connection; a probe
thread GETs /v2/health/live every --probe-interval s on another connection and records each
latency. Starts `trtserve serve` (the embedded model; extra server flags after `--`), or uses
--url. Runs --rounds rounds per server variant, alternating variants; writes a markdown report.

    .venv/bin/python bench/health_under_load.py --seconds 20 --rounds 2 \\
        --variant default= --variant threads=--parse-processes=0
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # the server's default --max-body-bytes
TRITON = "/v2/models/ensemble/generate"


def _fill(prefix: str, unit: str, suffix: str, size: int) -> bytes:
    """prefix + unit * n + suffix, n as large as fits in `size` bytes (the unit carries its own
    separator, the suffix closes the JSON)."""
    n = (size - len(prefix) - len(suffix)) // len(unit)
    return (prefix + unit * n + suffix).encode()


def huge_bodies(size: int, model: str = "ensemble") -> dict[str, tuple[str, bytes]]:
    """name -> (path, body), each body at most `size` bytes."""
    chat_head = '{"model":"%s","max_tokens":4,"messages":[' % model
    return {
        "huge_prompt": (TRITON, _fill('{"max_tokens":4,"text_input":"', "hello world ", '"}',
                                      size)),
        "huge_chat": ("/v1/chat/completions",
                      _fill(chat_head, '{"role":"user","content":"word"},',
                            '{"role":"user","content":"end"}]}', size)),
        "huge_bad_words": (TRITON, _fill('{"text_input":"hi","max_tokens":4,"bad_words":[',
                                         '"ab",', '"z"]}', size)),
        "long_prompt": ("/v1/completions", _fill('{"model":"%s","max_tokens":4,"prompt":"'
                                                 % model, "hello world ", '"}', 100_000)),
    }


@dataclass
class LoadResult:
    probes: list[float] = field(default_factory=list)  # seconds per /v2/health/live
    probe_failures: int = 0
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    load_errors: int = 0

    def p(self, q: float) -> float:
        ordered = sorted(self.probes)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _load_client(url: str, bodies: list[tuple[str, str, bytes]], stop: threading.Event,
                 result: LoadResult, lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        i = 0
        while not stop.is_set():
            name, path, body = bodies[i % len(bodies)]
            i += 1
            try:
                r = client.post(path, content=body, headers={"Content-Type": "application/json"})
                with lock:
                    result.statuses[(name, r.status_code)] += 1
            except httpx.HTTPError:
                with lock:
                    result.load_errors += 1


def _probe(url: str, interval: float, stop: threading.Event, result: LoadResult) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get("/v2/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            result.probes.append(time.perf_counter() - started)
            result.probe_failures += not ok
            stop.wait(interval)


def run_load(url: str, clients: int = 4, seconds: float = 10.0, probe_interval: float = 0.05,
             body_bytes: int = MAX_BODY_BYTES - 1024, model: str = "ensemble") -> LoadResult:
    """Flood `url` with huge bodies from `clients` threads while probing liveness."""
    items = [(name, path, body) for name, (path, body) in huge_bodies(body_bytes, model).items()]
    result, lock, stop = LoadResult(), threading.Lock(), threading.Event()
    threads = [threading.Thread(target=_load_client, args=(url, items[k:] + items[:k], stop,
                                                          result, lock), daemon=True)
               for k in range(clients)]
    threads.append(threading.Thread(target=_probe, args=(url, probe_interval, stop, result),
                                    daemon=True))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(180)
    return result


def _summary(name: str, rnd: int, r: LoadResult) -> str:
    ms = [p * 1e3 for p in r.probes]
    posted = sum(r.statuses.values())
    codes = dict(collections.Counter(code for (_, code), n in r.statuses.items()
                                     for _ in range(n)))
    return (f"| {rnd} | {name} | {len(ms)} | {statistics.median(ms):.1f} | {r.p(0.9) * 1e3:.1f} "
            f"| {r.p(0.99) * 1e3:.1f} | {max(ms):.1f} | {posted} | {json.dumps(codes)} "
            f"| {r.load_errors + r.probe_failures} |")


def _serve(extra: list[str], log_name: str):  # noqa: ANN202 - ServerProc
    from server_proc import ServerProc

    proc = ServerProc(*extra, log_name=log_name)
    proc.wait_ready()
    return proc


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--probe-interval", type=float, default=0.05)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=FLAGS (space-separated server flags, '=' inside flags allowed)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/health_under_load.md"))
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in args.variant] or [["default", ""]]
    rows, load_before = [], os.getloadavg()[0]
    for rnd in range(1, args.rounds + 1):
        for name, flags in variants:
            proc = None if args.url else _serve(flags.split(), f"health-{name}")
            try:
                url = args.url or proc.url
                result = run_load(url, args.clients, args.seconds, args.probe_interval)
            finally:
                if proc is not None:
                    proc.stop()
            rows.append(_summary(name, rnd, result))
            logger.info("%s", rows[-1])
    _write(args, rows, load_before)
    return 0


def _write(args: argparse.Namespace, rows: list[str], load_before: float) -> None:
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
               f"Python {platform.python_version()}")
    text = "\n".join([
        "# /v2/health/live under a flood of huge bodies", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {machine}; embedded SmolLM2-135M on onnxruntime CPU",
        f"- command: `.venv/bin/python {' '.join(sys.argv)}`",
        f"- load: {args.clients} client threads, each looping over 4 bodies (huge prompt, huge "
        "chat, huge bad_words: each 1 KiB under the 4 MiB --max-body-bytes; a 100 kB "
        f"tokenisable prompt); probe every {args.probe_interval * 1e3:.0f} ms; "
        f"{args.seconds:g} s per run; variants alternate within each round",
        f"- load average (1 min) before the run: {load_before:.2f}; the box is shared with "
        "other sessions, so compare variants within a round", "",
        "| round | variant | probes | p50 ms | p90 ms | p99 ms | max ms | bodies posted | "
        "statuses | errors |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, ""])
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
