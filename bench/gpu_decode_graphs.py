"""Decode steps through the ONNX Runtime CUDA executor with and without CUDA-graph replay, on the
embedded SmolLM2 (fp16), at every batch bucket: greedy tokens of the replayed path against the
dynamic-shape path and against the same static-shape bucket sessions run without capture (which
separates replay from the kernels onnxruntime picks for static shapes), and the step time of
each path in the same run (medians over decode steps). GPU machine only:

    python3 bench/gpu_decode_graphs.py [--batches 1,2,3,4,...] [--steps 32] [--out FILE.md]
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
from engine.executors import ort_cuda  # noqa: E402
from engine.executors.cuda_graphs import bucket_dims  # noqa: E402
from engine.executors.ort_cuda import OrtCudaExecutor  # noqa: E402
from engine.limits import StepLimits  # noqa: E402
from engine.step_inputs import Bucket  # noqa: E402

logger = logging.getLogger(__name__)
PROMPT_LEN = 32
BATCHES = "1,2,3,4,8,16,32,64,100,128,256"


class StaticUncaptured(OrtCudaExecutor):
    """The bucket sessions (every dim fixed) without enable_cuda_graph."""

    def _bucket_session(self, bucket: Bucket) -> object:
        g = self._device_io().geometry
        return ort_cuda._graph_session(self._model_path, self._device_id,
                                       bucket_dims(bucket, g.graph_shape[0], g.block_size),
                                       capture=False)


def _equal(a: np.ndarray, b: np.ndarray) -> str:
    share = float((a == b).mean()) * 100
    return "yes" if share == 100 else f"NO: {share:.1f}%"


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default=BATCHES)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    config, weights, _ = load_weights("gguf")
    rng = np.random.default_rng(0)
    lines = [f"# Decode steps with and without CUDA-graph replay — "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"command: `python3 {' '.join(sys.argv)}`; SmolLM2-135M fp16, prompt {PROMPT_LEN} "
             f"random tokens, {args.steps} greedy steps; medians over decode steps", "",
             "| batch | uncaptured ms/step | captured ms/step | speed-up | captured tok/s | "
             "replays | tokens = uncaptured | tokens = static uncaptured |",
             "|---|---|---|---|---|---|---|---|"]
    per_seq = -(-(PROMPT_LEN + args.steps) // BLOCK)
    limits = StepLimits(max_num_tokens=8192, max_batch_size=max(batches), max_context=2048)
    with tempfile.TemporaryDirectory() as tmp:
        build_model_graph(config, weights, Path(tmp), dtype="float16", block_size=BLOCK)
        path = Path(tmp) / MODEL_FILE
        plain, captured, static = (
            cls(path, config, num_blocks=max(batches) * per_seq, block_size=BLOCK,
                max_context=2048, limits=limits, cuda_graphs=g)
            for cls, g in ((OrtCudaExecutor, False), (OrtCudaExecutor, True),
                           (StaticUncaptured, True)))
        try:
            for batch in batches:
                prompts = rng.integers(100, config.vocab_size, (batch, PROMPT_LEN), np.int64)
                for ex in (plain, captured, static):  # warm-up: sessions, capture, allocator
                    engine_decode(ex, prompts, 4)
                before = captured.graph_replays
                want = engine_decode(plain, prompts, args.steps)
                got = engine_decode(captured, prompts, args.steps)
                same_shapes = engine_decode(static, prompts, args.steps)
                lines.append(f"| {batch} | {want.median_s * 1e3:.2f} | {got.median_s * 1e3:.2f} "
                             f"| {want.median_s / got.median_s:.2f}x | {got.tok_s:.0f} | "
                             f"{captured.graph_replays - before} | "
                             f"{_equal(got.tokens, want.tokens)} | "
                             f"{_equal(got.tokens, same_shapes.tokens)} |")
                logger.info(lines[-1])
        finally:
            for ex in (plain, captured, static):
                ex.close()
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
