"""Host-side cost of one scheduler step (schedule + sampling + update) with a null executor.

    .venv/bin/python bench/scheduler_overhead.py [--steps 30]

The null executor returns preallocated random float32 logits (vocab 49152) instantly, so what is
timed is pure scheduler work. Batches 1, 64, 256 at context ~1k tokens; greedy and sampled
(temperature 0.8, top_p 0.95) separately. Baseline in the same run: `np.argmax` over the same
logits (the floor of any greedy step: it reads every logit once). Writes
bench/results/scheduler_overhead.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.config import SchedulerConfig  # noqa: E402
from scheduler.plan import StepPlan, StepResult  # noqa: E402
from scheduler.request import Request, SamplingParams  # noqa: E402
from scheduler.sampling import SampleInput, sample  # noqa: E402
from scheduler.scheduler import Scheduler  # noqa: E402

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "scheduler_overhead.md"
VOCAB = 49152
CONTEXT = 1024
BATCHES = (1, 64, 256)
MODES = {"greedy": SamplingParams(max_tokens=512, ignore_eos=True),
         "sampled": SamplingParams(max_tokens=512, ignore_eos=True, temperature=0.8, top_p=0.95,
                                   seed=0)}
NOTES = [
    "What dominates:",
    "- greedy: the floor is reading the [batch, 49152] float32 logits once for argmax (50 MB at "
    "batch 256, ~2 ms here). The scheduler's own bookkeeping (schedule + append, finish checks, "
    "deltas) is the rest: a few microseconds per sequence, ~1.3 ms at batch 256, so the 1 ms "
    "target is missed by ~0.3 ms of pure-Python per-sequence work; an executor that returns "
    "argmax/top-k candidates instead of full logits would remove the floor.",
    "- sampled: per-row numpy over the whole vocab (exp, one SIMD value sort for top_p, a two-"
    "level inverse CDF): ~0.7 ms per row, so ~45 ms at batch 64 and ~180-270 ms at batch 256. "
    "Random-normal logits are the worst case for top_p (flat distribution: the nucleus holds "
    "most of the vocab). In EngineLoop sampling runs in the worker thread right after "
    "`execute` (Scheduler.sample_step), so it never blocks the event loop, but it is on the "
    "step's critical path.",
]


class NullExecutor:
    block_size = 16
    vocab_size = VOCAB
    max_context = 4096

    def __init__(self, max_rows: int) -> None:
        self.num_blocks = max_rows * (CONTEXT + 600) // self.block_size
        self._logits = np.random.default_rng(0).standard_normal((max_rows, VOCAB), np.float32)

    def execute(self, plan: StepPlan) -> StepResult:
        return StepResult(plan.step_id, self._logits[: plan.num_logit_rows])

    def close(self) -> None:
        pass


def measure(batch: int, params: SamplingParams, steps: int) -> dict[str, float]:
    ex = NullExecutor(batch)
    sched = Scheduler(SchedulerConfig(max_batch_size=batch, max_num_tokens=CONTEXT * batch,
                                      max_queue_size=0), block_size=ex.block_size,
                      num_blocks=ex.num_blocks, vocab_size=VOCAB, max_context=ex.max_context)
    rng = np.random.default_rng(1)
    for i in range(batch):
        prompt = rng.integers(0, VOCAB, CONTEXT).tolist()
        sched.add(Request(f"b{i}", prompt, params, arrival_time=0.0))
    plan = sched.schedule()  # whole prompts in one step
    assert plan is not None
    sched.update(plan, ex.execute(plan))
    t_sched, t_update, t_total = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        plan = sched.schedule()
        t1 = time.perf_counter()
        result = ex.execute(plan)
        t2 = time.perf_counter()
        sched.update(plan, result)
        t3 = time.perf_counter()
        t_sched.append(t1 - t0)
        t_update.append(t3 - t2)
        t_total.append((t1 - t0) + (t3 - t2))
    logits = ex.execute(plan).logits
    rows = [SampleInput(params, [0], 1, (), np.random.default_rng(0)) for _ in range(batch)]
    t_sample, t_argmax = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        sample(logits, rows)
        t1 = time.perf_counter()
        np.argmax(logits, axis=1)
        t_argmax.append(time.perf_counter() - t1)
        t_sample.append(t1 - t0)
    med = lambda xs: float(np.median(xs)) * 1e3  # noqa: E731
    return {"schedule_ms": med(t_sched), "update_ms": med(t_update), "step_ms": med(t_total),
            "sampling_ms": med(t_sample), "argmax_ms": med(t_argmax)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lines = [
        "# Scheduler host overhead per step (null executor)", "",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}",
        f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- vocab {VOCAB}, context {CONTEXT} prompt tokens + decode, {args.steps} decode steps, "
        "medians; step = schedule + update (update = sampling + append + finish checks)",
        "- baseline (same run): `np.argmax(logits, axis=1)` alone; ratio = step / baseline",
        "- other helpers share these 2 cores: absolute numbers are noisy", "",
        "| mode | batch | schedule ms | update ms | step ms | sampling alone ms | argmax ms "
        "| ratio | per seq us |",
        "|---|---|---|---|---|---|---|---|---|"]
    for mode, params in MODES.items():
        for batch in BATCHES:
            r = measure(batch, params, args.steps)
            logger.info("%s batch %d: %s", mode, batch, r)
            lines.append(f"| {mode} | {batch} | {r['schedule_ms']:.3f} | {r['update_ms']:.3f} | "
                         f"{r['step_ms']:.3f} | {r['sampling_ms']:.3f} | {r['argmax_ms']:.3f} | "
                         f"{r['step_ms'] / r['argmax_ms']:.1f}x | "
                         f"{r['step_ms'] * 1e3 / batch:.1f} |")
    lines += ["", *NOTES]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    logger.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
