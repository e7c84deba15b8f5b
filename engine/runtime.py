"""The server's one entry into the engine: options in, a loaded model (tokenizer + executor) out.

`prepare_model` builds (or finds) the cached ONNX graph; `load_model` also picks the backend,
sizes the KV pool and starts the executor. See docs/interfaces.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backends import BackendChoice, backend_candidates
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
from engine.dtypes import CPU_PRECISIONS, EXACT, NUMPY_DTYPES
from engine.registry import DEFAULT_MODEL, ModelSource, read_source, resolve_model
from engine.tokenizer import Tokenizer
from scheduler.plan import Executor

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DTYPES = ("auto", *NUMPY_DTYPES)
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
    q4_decode: bool = True  # CPU: single-token steps through the MatMulNBits graph when built
    cpu_precision: str = EXACT  # that graph's activations: exact (float32) | fast (int8)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"cpu_precision must be one of {CPU_PRECISIONS}, "
                             f"got {self.cpu_precision!r}")
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
    max_num_tokens: int | None = None  # the backend's preferred token budget per step, if any

    def close(self) -> None:
        self.executor.close()


def select_backend(options: EngineOptions) -> BackendChoice:
    """The preferred executor for this machine (the first candidate)."""
    return backend_candidates(options.backend)[0]


def resolve_dtype(options: EngineOptions, backend: BackendChoice) -> str:
    return backend.dtype if options.dtype == "auto" else options.dtype


def _builder() -> Any:
    import engine.builder as builder

    return builder


@functools.cache
def builder_version() -> str:
    """BUILDER_VERSION plus a digest of the graph-building sources (the builder, its dtype table,
    engine/graph/ and the loaders that turn a source into the weights and 4-bit blocks it
    writes), so a cached graph is rebuilt whenever the code that wrote it changed, even if nobody
    bumped the version."""
    builder = _builder()
    root = Path(builder.__file__).parent
    digest = hashlib.sha256()
    sources = [Path(builder.__file__), root / "dtypes.py", *sorted((root / "graph").glob("*.py")),
               *sorted((root / "loaders").glob("*.py"))]
    for path in sources:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{getattr(builder, 'BUILDER_VERSION', '0')}-{digest.hexdigest()[:12]}"


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
                                        progress=ConsoleProgress(f"building {source.name}"),
                                        blocks=model.blocks,
                                        cpu_precision=options.cpu_precision)
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
    key = cache_key(digest, builder_version(), dtype, options.block_size, options.cpu_precision)
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
    return per_token * block_size * NUMPY_DTYPES[dtype].itemsize


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


def device_kv_blocks(options: EngineOptions, config: ModelConfig, max_context: int,
                     dtype: str) -> int:
    """options.kv_cache_blocks, or kv_cache_fraction of free device memory."""
    if options.kv_cache_blocks is not None:
        return options.kv_cache_blocks
    from engine.device.cuda import CudaContext
    from engine.device_pool import blocks_that_fit

    ctx = CudaContext(0)
    try:
        free, _ = ctx.mem_info()
    finally:
        ctx.close()
    blocks = blocks_that_fit(config, options.block_size, dtype,
                             int(free * options.kv_cache_fraction))
    return max(blocks, math.ceil(max_context / options.block_size))


def q4_model_path(entry: Path, manifest: dict[str, Any], options: EngineOptions) -> Path | None:
    """The entry's single-token MatMulNBits graph, when it has one and options want it."""
    name = manifest.get("graph", {}).get("q4_model_file")
    return entry / name if name and options.q4_decode else None


def _executor(backend: BackendChoice, model_path: Path, config: ModelConfig,
              options: EngineOptions, max_context: int, dtype: str,
              single_token_model: Path | None) -> Executor:
    if backend.name == "onnxruntime-cpu":
        from engine.executors.ort import OrtExecutor

        blocks = kv_cache_blocks(options, config, max_context, dtype)
        return OrtExecutor(model_path, config, num_blocks=blocks, block_size=options.block_size,
                           max_context=max_context, providers=backend.providers, kv_dtype=dtype,
                           single_token_model=single_token_model)
    blocks = device_kv_blocks(options, config, max_context, dtype)
    if backend.name == "tensorrt":
        from engine.executors.trt import TrtExecutor

        return TrtExecutor(model_path, config, num_blocks=blocks,
                           block_size=options.block_size, max_context=max_context)
    from engine.executors.ort_cuda import OrtCudaExecutor

    return OrtCudaExecutor(model_path, config, num_blocks=blocks,
                           block_size=options.block_size, max_context=max_context)


def _start(backend: BackendChoice, options: EngineOptions) -> LoadedModel:
    dtype = resolve_dtype(options, backend)
    if dtype not in backend.dtypes:
        raise ModelError(f"{backend.name} cannot run {dtype} graphs (it runs "
                         f"{', '.join(backend.dtypes)}); choose another --dtype, or a GPU backend")
    source, entry = _prepare(options, dtype)
    manifest = read_manifest(entry)
    config = config_from_json(manifest["config"])
    max_context = check_max_context(options, config)
    logger.info("starting %s on %s (%s), block size %d, max context %d (pid %d)",
                source.name, backend.name, dtype, options.block_size, max_context, os.getpid())
    executor = _executor(backend, entry / MODEL_FILE, config, options, max_context, dtype,
                         q4_model_path(entry, manifest, options))
    return LoadedModel(name=source.name, config=config, tokenizer=Tokenizer.from_dir(entry),
                       executor=executor, backend=backend.name,
                       max_num_tokens=backend.max_num_tokens)


def load_model(options: EngineOptions) -> LoadedModel:
    """Prepare the graph, then start the best executor that runs here over a sized KV pool.

    With `--backend auto`, an executor that refuses this machine (e.g. TensorRT for RTX on an
    sm_90 GPU) is logged in one line and the next candidate is tried."""
    candidates = backend_candidates(options.backend)
    for backend, fallback in zip(candidates, [*candidates[1:], None], strict=True):
        try:
            loaded = _start(backend, options)
        except ModelError:
            raise
        except Exception as exc:  # a GPU executor refusing this machine
            if options.backend == "auto" and fallback is not None:
                logger.warning("%s cannot run here (%s); trying %s", backend.name, exc,
                               fallback.name)
                continue
            raise ModelError(f"{backend.name}: {exc}") from exc
        logger.info("%s ready on %s: %d KV blocks", loaded.name, loaded.backend,
                    loaded.executor.num_blocks)
        return loaded
    raise AssertionError("backend_candidates() always ends with onnxruntime-cpu")
