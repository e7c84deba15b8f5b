"""Server overhead: generated tokens/s through HTTP+SSE vs the same requests on EngineLoop directly.

One run does both, sequentially, with identical settings and requests (64 concurrent streams,
greedy, `min_tokens == max_tokens` so every request produces exactly max_tokens tokens):
  1. direct: load the model in this process, add the requests to EngineLoop, drain the streams;
  2. http: start `trtserve serve` as a subprocess, open the streams on
     /v2/models/ensemble/generate_stream with httpx (SSE parsed; the last event's
     num_output_tokens counts the tokens).
Writes a markdown table to --out (default bench/results/server_overhead.md).

    .venv/bin/python bench/server_overhead.py --streams 64 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from server_proc import ServerProc  # noqa: E402

from scheduler.request import Request, SamplingParams  # noqa: E402
from server.metrics.server_metrics import ServerMetrics  # noqa: E402
from server.model_loader import load_serving_model  # noqa: E402
from server.serving import ServingModel  # noqa: E402
from server.settings import ServerSettings  # noqa: E402

logger = logging.getLogger(__name__)

PROMPTS = ["Explain why the sky is blue.", "Write a short poem about autumn.",
           "What is machine learning?", "List three uses of Python.",
           "Describe a cat to a child.", "How do airplanes fly?",
           "Give me a recipe for pancakes.", "Summarize the plot of Hamlet."]


def _prompt(i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} (request {i})"


async def run_direct(model: ServingModel, n: int, max_tokens: int, tag: str) -> tuple[int, float]:
    tok = model.tokenizer
    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens)

    async def one(i: int) -> int:
        req = Request(request_id=f"{tag}-{i}", prompt_token_ids=tok.encode(_prompt(i)),
                      params=params, arrival_time=time.monotonic())
        count = 0
        async for out in model.loop.add(req):
            count += len(out.new_token_ids)
        return count

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(counts), time.perf_counter() - t0


async def run_http(url: str, n: int, max_tokens: int) -> tuple[int, float]:
    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {"text_input": _prompt(i), "max_tokens": max_tokens, "min_tokens": max_tokens,
                "stream": True, "return_num_output_tokens": True}
        last = 0
        async with client.stream("POST", url + "/v2/models/ensemble/generate_stream",
                                 json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError(event["error"])
                    last = event["num_output_tokens"]
        return last

    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(client, i) for i in range(n)))
        return sum(counts), time.perf_counter() - t0


def _server_args(s: ServerSettings) -> list[str]:
    return ["--max-batch-size", str(s.max_batch_size), "--max-queue-size", str(s.max_queue_size),
            "--kv-cache-blocks", str(s.kv_cache_blocks), "--log-level", "warning"]


def _tps(r: tuple[int, float]) -> float:
    return r[0] / r[1]


def _report(args: argparse.Namespace, rounds: list[tuple[tuple[int, float], tuple[int, float]]]
            ) -> str:
    rows = []
    for i, (d, h) in enumerate(rounds, 1):
        rows.append(f"| {i} | EngineLoop direct | {d[0]} | {d[1]:.2f} | {_tps(d):.1f} |")
        rows.append(f"| {i} | HTTP + SSE | {h[0]} | {h[1]:.2f} | {_tps(h):.1f} |")
    d_best = max(_tps(d) for d, _ in rounds)
    h_best = max(_tps(h) for _, h in rounds)
    d_sum = sum(d[0] for d, _ in rounds) / sum(d[1] for d, _ in rounds)
    h_sum = sum(h[0] for _, h in rounds) / sum(h[1] for _, h in rounds)
    return "\n".join([
        "# Server overhead: HTTP+SSE vs EngineLoop directly", "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}; onnxruntime CPU backend, embedded SmolLM2-135M",
        f"- command: `.venv/bin/python bench/server_overhead.py --streams {args.streams} "
        f"--max-tokens {args.max_tokens} --rounds {args.rounds}`",
        f"- {args.streams} concurrent requests per run, greedy, min_tokens = max_tokens = "
        f"{args.max_tokens}; direct and HTTP runs alternate; the server is a separate process "
        "(same settings) and the HTTP client shares the same cores.",
        f"- load average (1 min) at the end of the run: {os.getloadavg()[0]:.2f} (the bench's "
        "own load included); compare rounds, the machine's speed drifts.", "",
        "| round | path | tokens | seconds | tokens/s |", "|---|---|---|---|---|", *rows, "",
        f"Aggregate over rounds: direct {d_sum:.1f} tok/s, HTTP {h_sum:.1f} tok/s -> "
        f"HTTP/direct = **{100 * h_sum / d_sum:.1f} %** (best-of: {100 * h_best / d_best:.1f} %; "
        "target >= 90 %)", ""])


async def _bench(args: argparse.Namespace, settings: ServerSettings, url: str
                 ) -> list[tuple[tuple[int, float], tuple[int, float]]]:
    model = await load_serving_model(settings, ServerMetrics([settings.model]))
    rounds = []
    try:
        for i in range(args.rounds):
            direct = await run_direct(model, args.streams, args.max_tokens, f"r{i}")
            logger.info("round %d direct: %d tokens in %.2fs", i + 1, *direct)
            http = await run_http(url, args.streams, args.max_tokens)
            logger.info("round %d http: %d tokens in %.2fs", i + 1, *http)
            rounds.append((direct, http))
    finally:
        await model.loop.stop()
        model.close()
    return rounds


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--kv-cache-blocks", type=int, default=1024)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "server_overhead.md"))
    args = p.parse_args()
    settings = ServerSettings(max_batch_size=args.streams, max_queue_size=args.streams,
                              kv_cache_blocks=args.kv_cache_blocks)
    proc = ServerProc(*_server_args(settings), log_name="bench")
    try:
        proc.wait_ready()
        rounds = asyncio.run(_bench(args, settings, proc.url))
    finally:
        proc.stop()
    report = _report(args, rounds)
    Path(args.out).write_text(report)
    logger.info("wrote %s\n%s", args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
