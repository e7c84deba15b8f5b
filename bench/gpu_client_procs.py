"""Closed-loop streaming load on a running server from several client processes (the lean
raw-socket client of bench/host_path_client.py), for concurrencies where one `trtserve bench`
process is the limit (on the H200 host at concurrency 256 it ran at 100% of a core while the
GPU idled). Triton generate_stream, min_tokens = max_tokens, every request the same prompt of
`--input-len` words (run the server with --no-enable-prefix-caching so each one is prefilled).
Output tokens are counted as ok streams x --output-len (the forced length); TTFT is the time to
the first event carrying `text_output`.

    python3 bench/gpu_client_procs.py --port 18123 --concurrency 256 --requests 1024 --procs 4
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import host_path_client  # noqa: E402

from loadgen.client import make_endpoint  # noqa: E402
from loadgen.dataset import BenchPrompt  # noqa: E402

logger = logging.getLogger(__name__)


def _proc(share: tuple[int, BenchPrompt, int, int]) -> host_path_client.LoadResult:
    port, prompt, conc, requests = share
    host_path_client.MARK = b"text_output"  # any event of a real model's stream
    endpoint = make_endpoint("triton", "ensemble")
    return asyncio.run(host_path_client.run_load("127.0.0.1", port, endpoint, prompt, conc,
                                                 requests))


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()
    prompt = BenchPrompt(prompt=" ".join(["the"] * args.input_len), input_len=args.input_len,
                         output_len=args.output_len)
    n, c = args.procs, args.concurrency
    r = args.requests
    shares = [(args.port, prompt, c // n + (i < c % n), r // n + (i < r % n)) for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        results = pool.map(_proc, shares)
    ok = sum(r.ok for r in results)
    wall = max(r.wall_s for r in results)
    ttft = sorted(t for r in results for t in r.ttft_s)
    dropped = [d for r in results for d in r.dropped]
    sys.stdout.write(
        f"| {c} | {args.requests} | {ok} | {len(dropped)} | {n} | "
        f"{ok * args.output_len / wall:,.1f} | {_pct(ttft, 50) * 1e3:,.0f} | "
        f"{_pct(ttft, 99) * 1e3:,.0f} | {wall:.1f} |\n")
    for d in dropped[:5]:
        logger.warning("dropped: %s", d)


if __name__ == "__main__":
    main()
