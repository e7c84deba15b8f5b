"""`trtserve build`: build a model's graph (+ TensorRT engine) into a directory that
`trtserve serve --engine-dir DIR` serves as built (the trtllm-build -> Triton workflow)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGES = {"graph": "graph (weights -> ONNX)", "engine": "TensorRT engine",
          "config": "config.json"}


def add_parser(subparsers: Any) -> None:
    from engine.dtypes import CPU_PRECISIONS
    from engine.engine_build import BuildOptions  # light: no onnx/TensorRT import

    d = BuildOptions(output_dir="")
    parser = subparsers.add_parser(
        "build", help="build a graph/TensorRT engine into a directory for serve --engine-dir",
        description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True,
                        help="directory to write (created; a previous build there is replaced)")
    parser.add_argument("--model", default=d.model,
                        help=f"registry name, .gguf file or Hugging Face directory [{d.model}]")
    parser.add_argument("--backend", default=d.backend, choices=("tensorrt", "onnxruntime"),
                        help=f"what the directory is built for [{d.backend}]")
    parser.add_argument("--dtype", default=d.dtype,
                        choices=("auto", "float32", "float16", "bfloat16"),
                        help="precision; auto: float16 for tensorrt, float32 for onnxruntime")
    for name, text in (("max_batch_size", "sequences per step at most"),
                       ("max_num_tokens", "tokens per step at most"),
                       ("max_model_len", "prompt + output tokens per sequence at most "
                                         "[the model's context length]"),
                       ("block_size", "tokens per KV block"),
                       ("max_kv_blocks", "largest KV pool (blocks) the TensorRT profile accepts "
                                         "[max batch x max model len / block size]")):
        default = getattr(d, name)
        shown = f" [{default}]" if default is not None else ""
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default,
                            help=text + shown)
    parser.add_argument("--cpu-precision", default=d.cpu_precision, choices=CPU_PRECISIONS,
                        help="arithmetic of the 4-bit single-token graph (a Q4 GGUF on "
                             f"onnxruntime, float32): exact or fast (int8 activations) "
                             f"[{d.cpu_precision}]")
    parser.add_argument("--gpu-arch", default="",
                        help="TensorRT target(s), comma-separated, e.g. sm86,sm89 [this GPU; "
                             "without one, every arch TensorRT for RTX builds for]")
    parser.set_defaults(run=run)


def _stages(backend: str) -> Any:
    """Logs "[i/n] stage" as each starts; the graph stage draws its own tqdm bars."""
    names = [s for s in STAGES if s != "engine" or backend == "tensorrt"]

    def stage(name: str) -> None:
        logger.info("[%d/%d] %s", names.index(name) + 1, len(names), STAGES[name])

    return stage


def run(args: argparse.Namespace) -> int:
    from engine.config import ModelError
    from engine.engine_build import BuildOptions, build_engine_dir
    from engine.engine_dir import summary
    from engine.executors.trt_build import TensorRTError

    try:
        opts = BuildOptions(output_dir=args.output_dir, model=args.model, backend=args.backend,
                            dtype=args.dtype, max_batch_size=args.max_batch_size,
                            max_num_tokens=args.max_num_tokens, max_model_len=args.max_model_len,
                            block_size=args.block_size, max_kv_blocks=args.max_kv_blocks,
                            gpu_archs=tuple(a for a in args.gpu_arch.split(",") if a),
                            cpu_precision=args.cpu_precision)
        config = build_engine_dir(opts, _stages(opts.backend))
    except (ModelError, TensorRTError, ValueError) as exc:
        sys.stderr.write(f"trtserve build: error: {' '.join(str(exc).split())}\n")
        return 1
    sys.stdout.write(summary(config, Path(opts.output_dir).expanduser()) + "\n")
    return 0
