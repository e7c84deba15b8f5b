"""`trtserve bench`: streaming load against a Triton-style or OpenAI-style server."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from loadgen.config import AUTO, ENDPOINTS, STREAMS_PER_PROC, BenchConfig, BenchConfigError
from loadgen.procs import ClientProcsError
from loadgen.report import render, write_json
from loadgen.runner import run_benchmark
from loadgen.tokenizer import ModelTokenizer, load_tokenizer

_D = BenchConfig.__dataclass_fields__  # defaults come from the dataclass, never copied
CLIENT_PROCS_ENV = "TRTSERVE_BENCH_CLIENT_PROCS"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _procs(text: str) -> int | str:
    if text.strip() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def _add_client_procs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--client-procs", type=_procs,
                   default=os.environ.get(CLIENT_PROCS_ENV, str(_D["client_procs"].default)),
                   help="client processes sharing each run's streams (one event loop each); "
                        f"'auto': one per {STREAMS_PER_PROC} streams, at most one per core "
                        f"[env {CLIENT_PROCS_ENV}; %(default)s]")


def add_parser(subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
               model_tokenizer: ModelTokenizer | None = None) -> None:
    """The `bench` parser; `model_tokenizer` reads --tokenizer names that are not a
    tokenizer.json or a directory holding one (trtserve passes the engine's)."""
    p = subparsers.add_parser("bench", help="benchmark a running server (streaming load)",
                              description=__doc__)
    p.add_argument("--url", default=_D["url"].default, help="server base URL")
    p.add_argument("--endpoint", choices=ENDPOINTS, default=_D["endpoint"].default,
                   help="triton: /v2/models/M/generate_stream; openai: /v1/completions "
                        "(streamed) [%(default)s]")
    p.add_argument("--model", default=_D["model"].default,
                   help="model name in the URL (triton) or the body (openai)")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=_ints, help="closed loop, e.g. 1,4,16,64")
    load.add_argument("--request-rate", type=_floats, help="open loop req/s, e.g. 1,2,inf")
    p.add_argument("--num-prompts", type=int, default=_D["num_prompts"].default,
                   help="requests per run (per concurrency / rate value) [%(default)s]")
    p.add_argument("--input-len", type=int, default=_D["input_len"].default,
                   help="prompt tokens per request (random dataset) [%(default)s]")
    p.add_argument("--output-len", type=int, default=_D["output_len"].default,
                   help="tokens to generate per request (max_tokens, EOS ignored) "
                        "[%(default)s]")
    p.add_argument("--dataset", default=_D["dataset"].default,
                   help="'random' or a JSONL file of prompts [%(default)s]")
    p.add_argument("--seed", type=int, default=_D["seed"].default,
                   help="seed of the random prompts and arrival times [%(default)s]")
    p.add_argument("--output-json", default=None, help="write all runs here (JSON)")
    p.add_argument("--plot", default=None, help="write a PNG of throughput and latency "
                   "against load here (needs matplotlib: checked before the run starts)")
    p.add_argument("--slo-ttft-ms", type=float, default=None,
                   help="goodput: count only requests with TTFT at most this many ms")
    p.add_argument("--slo-tpot-ms", type=float, default=None,
                   help="goodput: count only requests with time per output token at most this")
    p.add_argument("--tokenizer", default=_D["tokenizer"].default,
                   help="engine model name, .gguf, HF directory or tokenizer.json")
    p.add_argument("--timeout", type=float, default=_D["timeout_s"].default,
                   help="seconds per request")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    p.add_argument("--extra-body", default=_D["extra_body"].default,
                   help='JSON object added to every request body, e.g. sampling: '
                        '\'{"temperature": 0.8, "top_p": 0.95}\'')
    _add_client_procs(p)
    p.set_defaults(run=run, model_tokenizer=model_tokenizer)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        url=args.url.rstrip("/"), endpoint=args.endpoint, model=args.model,
        concurrency=args.concurrency or (), request_rate=args.request_rate or (),
        num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
        dataset=args.dataset, seed=args.seed, output_json=args.output_json, plot=args.plot,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms, tokenizer=args.tokenizer,
        timeout_s=args.timeout, progress=not args.no_progress, client_procs=args.client_procs,
        extra_body=args.extra_body)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the benchmark ran (failures are in the report), 1 when every request
    failed or a client process failed, 2 on bad arguments."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        config = config_from_args(args)
        if config.plot:  # a missing optional package fails now, not after the whole run
            from loadgen.plot import import_pyplot

            import_pyplot()
        tok = load_tokenizer(config.tokenizer, getattr(args, "model_tokenizer", None))
        runs = run_benchmark(config, tok)
    except ClientProcsError as exc:
        sys.stderr.write(f"trtserve bench: error: {exc}\n")
        return 1
    except (BenchConfigError, ValueError, OSError, ImportError) as exc:
        sys.stderr.write(f"trtserve bench: error: {exc}\n")
        return 2
    sys.stdout.write(render(runs) + "\n")
    sys.stdout.flush()
    if config.output_json:
        write_json(config.output_json, config, runs)
    if config.plot:
        from loadgen.plot import plot_runs

        plot_runs(runs, config.plot, title=f"{config.endpoint} {config.model} "
                  f"in={config.input_len} out={config.output_len}")
    return 1 if all(r.completed == 0 for r in runs) else 0
