"""Where a decode step's GPU time goes: every CUDA kernel and copy of the ONNX Runtime CUDA
executor's decode steps (embedded SmolLM2, fp16), recorded by CUPTI through torch.profiler, with
and without CUDA-graph replay. Per batch and mode: wall time per step, kernels and copies per
step, the kernels' summed GPU time, and the share of the step the GPU was busy (union of kernel
and copy intervals over the decode steps' wall windows); then the kernels that take the most
time at each batch. GPU machine only (torch with CUDA, onnxruntime-gpu):

    python3 bench/gpu_kernel_profile.py [--batches 1,64] [--steps 24] [--prompt-len 128]
        [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cpu import BLOCK, engine_decode, load_weights  # noqa: E402

from engine.builder import MODEL_FILE, build_model_graph  # noqa: E402
from engine.executors.ort_cuda import OrtCudaExecutor  # noqa: E402
from engine.limits import StepLimits  # noqa: E402
from scheduler.plan import StepPlan, StepResult  # noqa: E402

logger = logging.getLogger(__name__)
DECODE = "trtserve_decode_step"
TOP = 14


class Marked:
    """The executor with each decode step's wall window marked in the profile."""

    def __init__(self, ex: OrtCudaExecutor) -> None:
        self._ex = ex

    def execute(self, plan: StepPlan) -> StepResult:
        from torch.profiler import record_function

        if all(len(s.token_ids) == 1 for s in plan.seqs):
            with record_function(DECODE):
                return self._ex.execute(plan)
        return self._ex.execute(plan)


@dataclass(frozen=True, slots=True)
class StepProfile:
    steps: int
    wall_ms: float  # median wall window of a decode step
    kernels: float  # per step
    copies: float  # per step
    kernel_ms: float  # summed kernel time per step
    busy: float  # share of the decode windows some kernel or copy ran
    top: list[tuple[str, float, float]]  # (kernel, per step, mean us)


def _short(name: str) -> str:
    name = re.sub(r"<.*", "", name.replace("void ", ""))
    return name[:90]


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -1e30
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def analyse(trace: dict) -> StepProfile:
    events = trace.get("traceEvents", [])
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("name") == DECODE and e.get("cat") == "user_annotation")
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
           and "dur" in e]
    inside = [e for e in gpu if any(a <= e["ts"] < b for a, b in windows)]
    n = max(1, len(windows))
    kernels = [e for e in inside if e["cat"] == "kernel"]
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[_short(e["name"])].append(e["dur"])
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:TOP]
    wall = sum(b - a for a, b in windows)
    return StepProfile(
        steps=len(windows), wall_ms=statistics.median(b - a for a, b in windows) / 1e3
        if windows else 0.0, kernels=len(kernels) / n, copies=(len(inside) - len(kernels)) / n,
        kernel_ms=sum(e["dur"] for e in kernels) / n / 1e3,
        busy=_union([(e["ts"], e["ts"] + e["dur"]) for e in inside]) / wall if wall else 0.0,
        top=[(name, len(d) / n, sum(d) / len(d)) for name, d in top])


def profile_run(ex: OrtCudaExecutor, prompts: np.ndarray, steps: int, trace_path: Path
                ) -> StepProfile:
    from torch.profiler import ProfilerActivity, profile

    engine_decode(ex, prompts, 4, host_logits=False)  # sessions, capture, allocator
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine_decode(Marked(ex), prompts, steps, host_logits=False)  # type: ignore[arg-type]
    prof.export_chrome_trace(str(trace_path))
    return analyse(json.loads(trace_path.read_text()))


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    config, weights, _ = load_weights("gguf")
    rng = np.random.default_rng(0)
    per_seq = -(-(args.prompt_len + 2 * args.steps + 8) // BLOCK)
    limits = StepLimits(max_num_tokens=max(8192, max(batches) * args.prompt_len),
                        max_batch_size=max(batches), max_context=2048)
    rows, tops = [], []
    with tempfile.TemporaryDirectory() as tmp:
        build_model_graph(config, weights, Path(tmp), dtype="float16", block_size=BLOCK,
                          rotary_op=True)  # as served: with the decode graph
        for capture in (True, False):
            ex = OrtCudaExecutor(Path(tmp) / MODEL_FILE, config,
                                 num_blocks=max(batches) * per_seq, block_size=BLOCK,
                                 max_context=2048, limits=limits, cuda_graphs=capture)
            try:
                for batch in batches:
                    prompts = rng.integers(100, config.vocab_size, (batch, args.prompt_len),
                                           np.int64)
                    mode = "captured" if capture else "uncaptured"
                    p = profile_run(ex, prompts, args.steps, Path(tmp) / f"trace-{batch}.json")
                    rows.append(f"| {batch} | {mode} | {p.steps} | {p.wall_ms:.2f} | "
                                f"{p.kernels:.0f} | {p.copies:.1f} | {p.kernel_ms:.2f} | "
                                f"{p.busy * 100:.0f}% |")
                    logger.info(rows[-1])
                    tops += [f"### batch {batch}, {mode}: top kernels", "",
                             "| kernel | per step | mean us |", "|---|---:|---:|",
                             *[f"| `{n}` | {c:.1f} | {us:.1f} |" for n, c, us in p.top], ""]
            finally:
                ex.close()
    text = "\n".join([
        f"# Decode step kernels (CUPTI via torch.profiler) — "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}", "",
        f"command: `python3 {' '.join(sys.argv)}`; SmolLM2-135M fp16, prompt "
        f"{args.prompt_len} random tokens, {args.steps} greedy decode steps, token ids picked "
        "on the device", "",
        "| batch | mode | steps | wall ms (median) | kernels / step | copies / step "
        "| kernel ms / step | GPU busy |", "|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows, "", *tops]) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
