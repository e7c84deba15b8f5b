"""The kernels a decode step launches: the op histogram of the embedded SmolLM2 fp16 graph after
onnxruntime's CUDA EP optimisations (ORT_ENABLE_ALL), at one fixed decode bucket. GPU only:

    python3 bench/gpu_graph_ops.py [--batch 64] [--blocks 16]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cpu import BLOCK, load_weights  # noqa: E402

from engine.builder import MODEL_FILE, build_model_graph  # noqa: E402
from engine.executors.cuda_graphs import bucket_dims  # noqa: E402
from engine.step_inputs import Bucket  # noqa: E402
from engine.executors.ort import session_options  # noqa: E402


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=16)
    args = ap.parse_args()
    config, weights, _ = load_weights("gguf")
    with tempfile.TemporaryDirectory() as tmp:
        build_model_graph(config, weights, Path(tmp), dtype="float16", block_size=BLOCK)
        opts = session_options(1)
        for name, value in bucket_dims(Bucket(args.batch, args.blocks), 2 * 1024, BLOCK).items():
            opts.add_free_dimension_override_by_name(name, value)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(Path(tmp) / MODEL_FILE), sess_options=opts,
                             providers=["CUDAExecutionProvider"])
        before = onnx.load(str(Path(tmp) / MODEL_FILE), load_external_data=False).graph.node
        after = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False).graph.node
    hist = collections.Counter(n.op_type for n in after)
    lines = [f"SmolLM2 fp16 ({config.num_layers} layers), bucket {args.batch} rows x "
             f"{args.blocks} blocks: {len(before)} nodes as built, {len(after)} after the CUDA EP "
             f"optimisations ({len(after) / config.num_layers:.1f} per layer)",
             ", ".join(f"{op} {n}" for op, n in hist.most_common())]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
