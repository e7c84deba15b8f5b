"""Per engine step, where the server's host time goes during a load window: a `py-spy record -f
raw` profile of the serving process (all threads, `-r RATE` samples/s per thread) divided by the
engine steps of that window (`trtserve_step_duration_seconds_count` read before and after it).
Each sample goes to the first category whose frame is on its stack; the executor call's own time
per step (`trtserve_step_duration_seconds_sum`) is printed beside it.

    python3 bench/gpu_step_split.py PROFILE.txt --rate 200 --metrics-before A.txt \
        --metrics-after B.txt --seconds 8
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CATEGORIES = (  # (label, frame names): first match wins, in this order
    ("graph run (onnxruntime, waits for the GPU)", ("run_with_iobinding",)),
    ("device finish (KV scatter, pick, copies back)", ("finish_sampled", "finish_with_argmax")),
    ("staging (pack + one H2D copy)", ("stage", "copy_blocks_only")),
    ("host sampling", ("sample_step",)),
    ("scheduler (schedule, update)", ("schedule", "update", "drain_outputs")),
    ("other, worker thread", ("_execute_and_sample",)),
    ("publish to request streams", ("_publish",)),
)
OTHER = "event loop: HTTP, SSE, detokenize, metrics, other"


def metric(path: Path, name: str) -> float:
    """The value of an unlabelled sample `name` in a Prometheus text file (0 when absent)."""
    for line in path.read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", line)
        if m:
            return float(m.group(1))
    return 0.0


def split(profile: Path) -> tuple[dict[str, int], int]:
    counts = {label: 0 for label, _ in CATEGORIES} | {OTHER: 0}
    total = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = {f.split(" (")[0].strip().rsplit(".", 1)[-1] for f in stack.split(";")}
        label = next((lab for lab, keys in CATEGORIES if names.intersection(keys)), OTHER)
        counts[label] += int(count)
        total += int(count)
    return counts, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--metrics-before", type=Path, required=True)
    ap.add_argument("--metrics-after", type=Path, required=True)
    ap.add_argument("--seconds", type=float, required=True, help="the profile's duration")
    args = ap.parse_args()
    name = "trtserve_step_duration_seconds"
    steps = metric(args.metrics_after, f"{name}_count") - metric(args.metrics_before,
                                                                f"{name}_count")
    execute_s = metric(args.metrics_after, f"{name}_sum") - metric(args.metrics_before,
                                                                  f"{name}_sum")
    counts, total = split(args.profile)
    if steps <= 0 or not total:
        sys.stdout.write(f"no steps ({steps:.0f}) or no samples ({total}) in the window\n")
        return
    ms = 1e3 / steps
    out = [f"{steps:.0f} engine steps in {args.seconds:.1f} s: {args.seconds * ms:.2f} ms wall "
           f"per step; executor call {execute_s * ms:.2f} ms per step (metrics)",
           "| host time per step (py-spy, all threads) | ms/step | share of samples |",
           "|---|---:|---:|"]
    for label, n in counts.items():
        out.append(f"| {label} | {n / args.rate * ms:.2f} | {100 * n / total:.1f}% |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
