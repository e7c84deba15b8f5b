"""The server's one entry into the engine: options in, a loaded model (tokenizer + executor) out.

`prepare_model` builds (or finds) the cached ONNX graph; `load_model` also picks the backend,
sizes the KV pool and starts the executor. See docs/interfaces.md.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.cache import (
    ConsoleProgress,
    build_entry,
    cache_key,
    cache_root,
    config_from_json,
    config_to_json,
    entry_dir,
    read_manifest,
    weights_hash,
)
from engine.config import ModelConfig, ModelError
from engine.registry import DEFAULT_MODEL, ModelSource, read_source, resolve_model
from engine.tokenizer import Tokenizer
from scheduler.plan import Executor

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MODEL_FILE = "model.onnx"
KV_BUDGET_CAP_BYTES = 2 * 1024**3  # host pool never sized beyond this from free memory
FALLBACK_AVAILABLE_BYTES = 2 * 1024**3  # when free memory cannot be read


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How to load a model; each default is defined here once (the CLI reads them from here)."""

    model: str = DEFAULT_MODEL  # registry name, a .gguf path, or an HF directory
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    engine_dir: str | None = None  # cache root override (default ~/.cache/trtserve)
    block_size: int = 16
    kv_cache_blocks: int | None = None  # exact count; None -> from kv_cache_fraction
    kv_cache_fraction: float = 0.1  # of free host/device memory, when blocks not given
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    max_context: int | None = None  # None -> model's max_position_embeddings

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.kv_cache_blocks is not None and self.kv_cache_blocks <= 0:
            raise ValueError(f"kv_cache_blocks must be positive, got {self.kv_cache_blocks}")
        if not 0.0 < self.kv_cache_fraction <= 1.0:
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if self.max_context is not None and self.max_context <= 0:
            raise ValueError(f"max_context must be positive, got {self.max_context}")


@dataclass
class LoadedModel:
    name: str  # canonical model name, e.g. "smollm2-135m-instruct"
    config: ModelConfig  # engine/config.py
    tokenizer: Tokenizer  # engine/tokenizer.py
    executor: Executor  # scheduler.plan.Executor
    backend: str  # "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"

    def close(self) -> None:
        self.executor.close()


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The seam where GPU backends plug in: which executor runs, and in which dtype."""

    name: str  # "onnxruntime-cpu" | "onnxruntime-cuda" | "tensorrt"
    providers: tuple[str, ...]  # onnxruntime execution providers, in preference order
    dtype: str  # graph dtype the backend runs best with when options.dtype == "auto"


def _cuda_available() -> bool:
    import importlib.util

    import onnxruntime

    return ("CUDAExecutionProvider" in onnxruntime.get_available_providers()
            and importlib.util.find_spec("cuda") is not None)


def select_backend(options: EngineOptions) -> BackendChoice:
    """Pick the executor for this machine. TensorRT (H7) registers itself here later."""
    if options.backend == "tensorrt":
        raise ModelError("the TensorRT backend is not available in this build; "
                         "use --backend onnxruntime")
    if _cuda_available():
        return BackendChoice("onnxruntime-cuda", ("CUDAExecutionProvider",), "float16")
    return BackendChoice("onnxruntime-cpu", ("CPUExecutionProvider",), "float32")


def resolve_dtype(options: EngineOptions, backend: BackendChoice) -> str:
    return backend.dtype if options.dtype == "auto" else options.dtype


def _builder() -> Any:
    import engine.builder as builder

    return builder


def builder_version() -> str:
    return str(getattr(_builder(), "BUILDER_VERSION", "0"))


def _graph_manifest(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(spec)
    return dict(vars(spec)) if hasattr(spec, "__dict__") else {"spec": repr(spec)}


def _build(source: ModelSource, dtype: str, options: EngineOptions, digest: str,
           out_dir: Path) -> dict[str, Any]:
    logger.info("building the %s graph of %s (%s) into %s", dtype, source.name, source.path,
                out_dir)
    model = read_source(source, ConsoleProgress(f"loading {source.name}"))
    spec = _builder().build_model_graph(model.config, model.weights, out_dir, dtype=dtype,
                                        block_size=options.block_size,
                                        progress=ConsoleProgress(f"building {source.name}"))
    model.tokenizer.save(out_dir)
    return {"name": source.name, "source": str(source.path), "kind": source.kind,
            "config": config_to_json(model.config), "dtype": dtype,
            "block_size": options.block_size, "graph": _graph_manifest(spec),
            "inputs": list(getattr(spec, "input_names", ())),
            "outputs": list(getattr(spec, "output_names", ())),
            "builder_version": builder_version(), "weights_hash": digest}


def _prepare(options: EngineOptions, dtype: str) -> tuple[ModelSource, Path]:
    source = resolve_model(options.model)
    digest = weights_hash(source.path)
    key = cache_key(digest, builder_version(), dtype, options.block_size)
    entry = entry_dir(cache_root(options.engine_dir), source.name, key)
    return source, build_entry(entry, lambda tmp: _build(source, dtype, options, digest, tmp))


def prepare_model(options: EngineOptions) -> Path:
    """Build (or find) the cached ONNX graph for `options`; return its directory."""
    return _prepare(options, resolve_dtype(options, select_backend(options)))[1]


def check_max_context(options: EngineOptions, config: ModelConfig) -> int:
    limit = config.max_position_embeddings
    if options.max_context is None:
        return limit
    if options.max_context > limit:
        raise ModelError(f"max_context {options.max_context} exceeds the model's maximum "
                         f"context of {limit} tokens")
    return options.max_context


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a conservative constant."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_AVAILABLE_BYTES


def kv_block_bytes(config: ModelConfig, block_size: int, dtype: str) -> int:
    """K and V of every layer for one block of tokens."""
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim
    return per_token * block_size * DTYPE_BYTES[dtype]


def kv_cache_blocks(options: EngineOptions, config: ModelConfig, max_context: int,
                    dtype: str, available: int | None = None) -> int:
    """options.kv_cache_blocks, or a fraction of free memory (capped), but always room for one
    sequence of max_context tokens."""
    if options.kv_cache_blocks is not None:
        return options.kv_cache_blocks
    free = available_memory_bytes() if available is None else available
    budget = min(int(free * options.kv_cache_fraction), KV_BUDGET_CAP_BYTES)
    blocks = budget // kv_block_bytes(config, options.block_size, dtype)
    return max(int(blocks), math.ceil(max_context / options.block_size))


def _executor(backend: BackendChoice, model_path: Path, config: ModelConfig,
              num_blocks: int, options: EngineOptions, max_context: int, dtype: str) -> Executor:
    if backend.name == "onnxruntime-cuda":
        from engine.executors.ort_cuda import OrtCudaExecutor

        return OrtCudaExecutor(model_path, config, num_blocks=num_blocks,
                               block_size=options.block_size, max_context=max_context)
    from engine.executors.ort import OrtExecutor

    return OrtExecutor(model_path, config, num_blocks=num_blocks, block_size=options.block_size,
                       max_context=max_context, providers=backend.providers, kv_dtype=dtype)


def load_model(options: EngineOptions) -> LoadedModel:
    """Prepare the graph, then start the executor over a KV pool sized for this machine."""
    backend = select_backend(options)
    dtype = resolve_dtype(options, backend)
    source, entry = _prepare(options, dtype)
    manifest = read_manifest(entry)
    config = config_from_json(manifest["config"])
    max_context = check_max_context(options, config)
    blocks = kv_cache_blocks(options, config, max_context, dtype)
    logger.info("loading %s on %s (%s): %d KV blocks of %d tokens, max context %d (pid %d)",
                source.name, backend.name, dtype, blocks, options.block_size, max_context,
                os.getpid())
    executor = _executor(backend, entry / MODEL_FILE, config, blocks, options, max_context,
                         dtype)
    return LoadedModel(name=source.name, config=config, tokenizer=Tokenizer.from_dir(entry),
                       executor=executor, backend=backend.name)
