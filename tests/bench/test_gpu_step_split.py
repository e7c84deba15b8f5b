"""bench/gpu_step_split.py: py-spy samples go to the first matching category and are divided by
the engine steps between two /metrics scrapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_split_per_step(tmp_path: Path) -> None:
    profile = tmp_path / "p.txt"
    profile.write_text(
        "_run (loop.py:1);_execute_and_sample (loop.py:2);run_with_iobinding (x.py:3) 100\n"
        "_execute_and_sample (loop.py:2);sample_step (s.py:4);choose_tokens (s.py:5) 40\n"
        "_execute_and_sample (loop.py:2);finish_sampled (io.py:6) 20\n"
        "run (asyncio.py:1);_publish (loop.py:9) 10\n"
        "run (asyncio.py:1);write (h11.py:2) 30\n")
    before, after = tmp_path / "a.txt", tmp_path / "b.txt"
    before.write_text("trtserve_step_duration_seconds_count 100\n"
                      "trtserve_step_duration_seconds_sum 1.0\n")
    after.write_text("# HELP x\ntrtserve_step_duration_seconds_count 200\n"
                     "trtserve_step_duration_seconds_sum 1.5\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step_split.py"), str(profile),
                          "--rate", "100", "--seconds", "2", "--metrics-before", str(before),
                          "--metrics-after", str(after)], capture_output=True, text=True,
                         check=True).stdout
    assert "100 engine steps in 2.0 s: 20.00 ms wall per step; executor call 5.00 ms" in out
    assert "| graph run (onnxruntime, waits for the GPU) | 10.00 | 50.0% |" in out
    assert "| host sampling | 4.00 | 20.0% |" in out
    assert "| device finish (KV scatter, pick, copies back) | 2.00 | 10.0% |" in out
    assert "| publish to request streams | 1.00 | 5.0% |" in out
    assert "| event loop: HTTP, SSE, detokenize, metrics, other | 3.00 | 15.0% |" in out
