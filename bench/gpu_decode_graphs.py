"""Decode steps through the ONNX Runtime CUDA executor with and without CUDA-graph replay, on the
embedded SmolLM2 (fp16), at every batch bucket: greedy tokens of the replayed path against the
uncaptured path (`cuda_graphs=False`: the same fixed-shape bucket sessions without capture) and
against the dynamic-shape session (what decode ran through before the bucket sessions were used
uncaptured too), and the step time of each path in the same run (medians over decode steps).
The captured path is timed twice: token ids picked on the device (what the server does for
greedy rows) and every row's logits copied to the host. GPU machine only:

    python3 bench/gpu_decode_graphs.py [--batches 1,2,3,4,...] [--steps 32] [--out FILE.md]
        [--rotary-op] [--no-decode-graph] [--prompt-len 32]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cpu import BLOCK, engine_decode, load_weights  # noqa: E402

from engine.builder import MODEL_FILE, build_model_graph  # noqa: E402
from engine.executors import cuda_graphs  # noqa: E402
from engine.executors.ort_cuda import OrtCudaExecutor  # noqa: E402
from engine.limits import StepLimits  # noqa: E402
from engine.step_inputs import Bucket  # noqa: E402

logger = logging.getLogger(__name__)
BATCHES = "1,2,3,4,8,16,32,64,100,128,256"


class Dynamic(OrtCudaExecutor):
    """Decode steps through the dynamic-shape session (no bucket sessions at all)."""

    def _capture_at_startup(self) -> None:
        return None

    def _captured_bucket(self, plan: object) -> Bucket | None:
        return None


def _equal(a: np.ndarray, b: np.ndarray) -> str:
    share = float((a == b).mean()) * 100
    return "yes" if share == 100 else f"NO: {share:.1f}%"


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default=BATCHES)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--rotary-op", action="store_true",
                    help="build RoPE as the opset-23 RotaryEmbedding op")
    ap.add_argument("--min-blocks", type=int, default=cuda_graphs.MIN_BLOCKS,
                    help="past blocks of the smallest context bucket")
    ap.add_argument("--no-decode-graph", action="store_true",
                    help="decode buckets run the general graph (no model_decode.onnx)")
    ap.add_argument("--prompt-len", type=int, default=32)
    args = ap.parse_args()
    cuda_graphs.MIN_BLOCKS = args.min_blocks
    batches = [int(b) for b in args.batches.split(",")]
    config, weights, _ = load_weights("gguf")
    rng = np.random.default_rng(0)
    lines = [f"# Decode steps with and without CUDA-graph replay — "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"command: `python3 {' '.join(sys.argv)}`; SmolLM2-135M fp16, prompt "
             f"{args.prompt_len} random tokens, {args.steps} greedy steps; medians over decode "
             f"steps; RoPE {'op' if args.rotary_op else 'decomposed'}, context buckets from "
             f"{args.min_blocks} blocks, decode graph "
             f"{'off' if args.no_decode_graph else 'default'}", "",
             "| batch | dynamic ms | uncaptured ms | captured ms (ids) | captured ms (logits) "
             "| speed-up vs uncaptured | captured tok/s | replays | tokens = uncaptured | "
             "tokens = dynamic |", "|---|---|---|---|---|---|---|---|---|---|"]
    per_seq = -(-(args.prompt_len + 2 * args.steps + 8) // BLOCK)
    limits = StepLimits(max_num_tokens=8192, max_batch_size=max(batches), max_context=2048)
    with tempfile.TemporaryDirectory() as tmp:
        build_model_graph(config, weights, Path(tmp), dtype="float16", block_size=BLOCK,
                          rotary_op=args.rotary_op or None,
                          decode_graph=False if args.no_decode_graph else None)
        path = Path(tmp) / MODEL_FILE
        dynamic, plain, captured = (
            cls(path, config, num_blocks=max(batches) * per_seq, block_size=BLOCK,
                max_context=2048, limits=limits, cuda_graphs=g)
            for cls, g in ((Dynamic, False), (OrtCudaExecutor, False), (OrtCudaExecutor, True)))
        try:
            for batch in batches:
                prompts = rng.integers(100, config.vocab_size, (batch, args.prompt_len), np.int64)
                for ex in (dynamic, plain, captured):  # warm-up: sessions, capture, allocator
                    engine_decode(ex, prompts, 4, host_logits=False)
                before = captured.graph_replays
                old = engine_decode(dynamic, prompts, args.steps, host_logits=False)
                want = engine_decode(plain, prompts, args.steps, host_logits=False)
                got = engine_decode(captured, prompts, args.steps, host_logits=False)
                full = engine_decode(captured, prompts, args.steps, host_logits=True)
                lines.append(f"| {batch} | {old.median_s * 1e3:.2f} | {want.median_s * 1e3:.2f} "
                             f"| {got.median_s * 1e3:.2f} | {full.median_s * 1e3:.2f} "
                             f"| {want.median_s / got.median_s:.2f}x | {got.tok_s:.0f} | "
                             f"{captured.graph_replays - before} | "
                             f"{_equal(got.tokens, want.tokens)} | "
                             f"{_equal(got.tokens, old.tokens)} |")
                logger.info(lines[-1])
        finally:
            for ex in (dynamic, plain, captured):
                ex.close()
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
