"""A whole benchmark: for each sweep value build prompts, run, count tokens, summarize."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from loadgen.client import Endpoint, RequestResult, make_endpoint
from loadgen.config import BenchConfig
from loadgen.dataset import BenchPrompt, build_prompts
from loadgen.generator import OnDone, run_once
from loadgen.procs import run_in_procs
from loadgen.progress import ProgressBar
from loadgen.split import make_shares
from loadgen.stats import RunStats, compute_stats
from loadgen.tokenizer import BenchTokenizer

logger = logging.getLogger(__name__)


def _ntok(tok: BenchTokenizer, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False)) if text else 0


def count_output_tokens(results: Sequence[RequestResult], tok: BenchTokenizer) -> None:
    """Token counts from what was streamed, never from the server's own counts.

    The primary count re-tokenizes each event's text on its own and adds them up: a server
    streams one step's tokens per event, so this recovers the generated count even when the
    model emits a non-canonical split ("sh"+"ak"+"able") that re-tokenizing the concatenated
    text would merge into fewer tokens. The whole-text count is kept too, for comparison.
    """
    for r in results:
        r.num_output_tokens = sum(_ntok(tok, chunk) for chunk in r.chunks)
        r.num_output_tokens_concat = _ntok(tok, r.text)


def _run_one(config: BenchConfig, endpoint: Endpoint, prompts: Sequence[BenchPrompt],
             value: float, seed: int, on_done: OnDone) -> tuple[list[RequestResult], float]:
    """One run, in this process or spread over `config.procs_for(value)` client processes."""
    procs = config.procs_for(value)
    if procs == 1:
        return asyncio.run(run_once(config.url, endpoint, prompts, config.mode, value, seed,
                                    config.timeout_s, on_done))
    shares = make_shares(prompts, config.mode, value, seed, procs)
    logger.info("%d client processes", len(shares))
    return run_in_procs(config.url, config.endpoint, config.model, shares, config.timeout_s,
                        on_done, config.extra_body)


def run_benchmark(config: BenchConfig, tok: BenchTokenizer) -> list[RunStats]:
    """Run every sweep value in order. Run i uses prompts seeded with `seed + i`, so runs never
    share prompts (no prefix-cache hits between runs) and a rerun repeats them exactly."""
    endpoint = make_endpoint(config.endpoint, config.model, config.extra_body)
    runs: list[RunStats] = []
    for i, value in enumerate(config.sweep):
        prompts = build_prompts(tok, config.dataset, config.num_prompts, config.input_len,
                                config.output_len, config.seed + i)
        label = f"{config.mode}={value:g}"
        bar = ProgressBar(label, len(prompts), enabled=config.progress)
        logger.info("run %s: %d prompts to %s%s", label, len(prompts), config.url,
                    endpoint.path())
        try:
            results, duration = _run_one(config, endpoint, prompts, value, config.seed + i,
                                         bar.update)
        finally:
            bar.close()
        count_output_tokens(results, tok)
        runs.append(compute_stats(results, config.mode, value, duration,
                                  config.slo_ttft_ms, config.slo_tpot_ms))
    return runs
