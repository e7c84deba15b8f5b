"""Top frames of a `py-spy record -f raw` profile: the share of samples whose innermost frame
is each function (own time), and the share spent under a few frames of interest (inclusive).

    python3 bench/pyspy_top.py PROFILE.txt [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

INCLUSIVE = ("_execute_and_sample", "run_with_iobinding", "_create_inference_session", "stage",
             "finish_with_argmax", "finish_sampled", "sample_step", "schedule", "update", "_publish",
             "_run_once", "select")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        names = {f.split(" (")[0].strip().rsplit(".", 1)[-1] for f in frames}
        for key in INCLUSIVE:
            if key in names:
                under[key] += n
    if not total:
        sys.stdout.write("no samples\n")
        return
    out = [f"{total} samples; own time of the innermost frame:"]
    out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(args.top)]
    out.append("inclusive (any thread):")
    out += [f"{100 * n / total:5.1f}%  {key}" for key, n in under.most_common()]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
