"""Wall time of `trtserve --help` (and `serve --help`, `--version`): median of N runs, each a fresh
interpreter. With --base DIR (a checkout of another commit, e.g. `git archive 6e60b69 | tar -x -C
DIR`) the same commands run alternately from that tree with the same interpreter, for an A/B.

    .venv/bin/python bench/cli_startup.py --runs 9 --base /tmp/base \
        --out bench/results/cli_startup.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["serve", "--help"], ["--version"])


def wall_s(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=tree, env=env,
                   capture_output=True, check=False, timeout=120)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="runs per command and tree")
    parser.add_argument("--base", type=Path, default=None, help="tree of the commit to compare")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    opts = parser.parse_args()
    trees = {"this tree": ROOT, **({"base": opts.base} if opts.base else {})}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(opts.runs):  # alternate trees run by run: the shared box drifts
        for args in COMMANDS:
            for label, tree in trees.items():
                times.setdefault((" ".join(args), label), []).append(wall_s(tree, args))
    lines = [f"# CLI start-up: `python -m server.cli ARGS` wall time, median of {opts.runs}",
             "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {platform.node()}, {os.cpu_count()} cores, {platform.python_version()}"
             " (shared with other jobs: noisy; trees alternate run by run)",
             f"- command: {' '.join(sys.argv)}", "", "| args | " + " | ".join(trees) + " |",
             "|---|" + "---:|" * len(trees)]
    for args in COMMANDS:
        key = " ".join(args)
        cells = [f"{statistics.median(times[(key, t)]):.2f} s" for t in trees]
        if "--version" in args and "base" in trees:
            cells[-1] = "n/a (no --version)"
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if opts.out:
        opts.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
