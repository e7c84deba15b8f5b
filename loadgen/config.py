"""Typed configuration of one `trtserve bench` invocation (each default defined once, here)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

ENDPOINTS: tuple[str, ...] = ("triton", "openai-completions", "openai-chat")
AUTO = "auto"
STREAMS_PER_PROC = 32  # auto: one client process per this many streams (closed loop)


def parse_extra_body(text: str) -> dict[str, Any]:
    """--extra-body: "" or a JSON object (ValueError otherwise)."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"--extra-body must be a JSON object, got {text!r}")
    return value


class BenchConfigError(ValueError):
    """The benchmark was asked for something that cannot be run; the message says what."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to send, how hard, and where to write the results."""

    url: str = "http://127.0.0.1:8000"          # server base URL (no path)
    endpoint: str = "triton"                     # triton | openai-completions | openai-chat
    model: str = "ensemble"                      # model name in the URL / request body
    concurrency: tuple[int, ...] = ()            # closed loop: one run per value
    request_rate: tuple[float, ...] = ()         # open loop (Poisson, req/s): one run per value
    num_prompts: int = 64                        # requests per run
    input_len: int = 128                         # prompt tokens (random dataset)
    output_len: int = 128                        # forced generated tokens per request
    dataset: str = "random"                      # "random" or a JSONL path
    seed: int = 0                                # prompts and arrival times
    output_json: str | None = None               # results file (all runs)
    plot: str | None = None                      # PNG path
    slo_ttft_ms: float | None = None             # goodput: TTFT must be <= this
    slo_tpot_ms: float | None = None             # goodput: TPOT must be <= this
    tokenizer: str = "smollm2-135m-instruct"     # engine model name, .gguf, HF dir, tokenizer.json
    timeout_s: float = 300.0                     # per request, whole stream
    progress: bool = True                        # live progress bar on stderr
    client_procs: int | str = AUTO               # client processes per run, or "auto"
    extra_body: str = ""                         # JSON object added to every request body

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise BenchConfigError(f"--endpoint must be one of {', '.join(ENDPOINTS)}")
        if bool(self.concurrency) == bool(self.request_rate):
            raise BenchConfigError("give exactly one of --concurrency or --request-rate")
        if any(c <= 0 for c in self.concurrency):
            raise BenchConfigError("--concurrency values must be positive integers")
        if any(not (r > 0) or math.isnan(r) for r in self.request_rate):
            raise BenchConfigError("--request-rate values must be positive (or inf)")
        for name in ("num_prompts", "input_len", "output_len"):
            if getattr(self, name) <= 0:
                raise BenchConfigError(f"--{name.replace('_', '-')} must be positive")
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise BenchConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.extra_body:
            try:
                parse_extra_body(self.extra_body)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                raise BenchConfigError(f"--extra-body: {exc}") from exc
        if self.timeout_s <= 0:
            raise BenchConfigError("--timeout must be positive")
        if self.client_procs != AUTO and (isinstance(self.client_procs, str)
                                          or self.client_procs <= 0):
            raise BenchConfigError("--client-procs must be a positive integer or 'auto'")

    @property
    def mode(self) -> str:
        """'concurrency' (closed loop) or 'request_rate' (open loop)."""
        return "concurrency" if self.concurrency else "request_rate"

    @property
    def sweep(self) -> tuple[float, ...]:
        """The values swept, one run each."""
        return tuple(float(c) for c in self.concurrency) if self.concurrency else self.request_rate

    def procs_for(self, value: float) -> int:
        """Client processes for the run at sweep value `value`: never more than the streams
        (closed loop) or the prompts. `auto`: one per STREAMS_PER_PROC streams, at most one
        per core; in open loop the prompts stand for the streams (all may be in flight)."""
        limit = int(value) if self.mode == "concurrency" else self.num_prompts
        if self.client_procs == AUTO:
            want = min(os.cpu_count() or 1, limit // STREAMS_PER_PROC + 1)
        else:
            want = int(self.client_procs)
        return max(1, min(want, limit, self.num_prompts))
