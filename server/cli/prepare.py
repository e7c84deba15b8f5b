"""`trtserve prepare`: build (or find) the cached model graph, so `trtserve serve` starts fast."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.config import ModelError
from engine.options import EngineOptions
from engine.prepare import prepare_model


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model/--backend/--dtype/--cache-dir, defaults read from EngineOptions."""
    defaults = EngineOptions()
    parser.add_argument("--model", default=defaults.model,
                        help="registry name, a .gguf file or a Hugging Face directory "
                             f"(default: {defaults.model})")
    parser.add_argument("--backend", default=defaults.backend,
                        choices=("auto", "onnxruntime", "tensorrt"))
    parser.add_argument("--dtype", default=defaults.dtype,
                        choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--cache-dir", default=defaults.cache_dir,
                        help="cache root (default: $TRTSERVE_CACHE_DIR or ~/.cache/trtserve)")


def options_from_args(args: argparse.Namespace, **extra: Any) -> EngineOptions:
    return EngineOptions(model=args.model, backend=args.backend, dtype=args.dtype,
                         cache_dir=args.cache_dir, **extra)


def run(args: argparse.Namespace) -> int:
    try:
        path = prepare_model(options_from_args(args))
    except (ModelError, ValueError) as exc:
        sys.stderr.write(f"trtserve prepare: error: {exc}\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("prepare", help="build and cache the model graph")
    add_model_arguments(parser)
    parser.set_defaults(run=run)
