"""The server's one entry into the engine: options in, a loaded model (tokenizer + executor) out.

`prepare_model` builds (or finds) the cached ONNX graph; `load_model` also picks the backend,
sizes the KV pool and starts the executor. See docs/interfaces.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
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
from engine.kv_sizing import device_kv_blocks, kv_cache_blocks
from engine.limits import StepLimits, decide_limits
from engine.options import EngineOptions
from engine.registry import ModelSource, read_source, resolve_model
from engine.tokenizer import Tokenizer
from scheduler.plan import Executor

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


@dataclass
class LoadedModel:
    name: str  # canonical model name, e.g. "smollm2-135m-instruct"
    config: ModelConfig  # engine/config.py
    tokenizer: Tokenizer  # engine/tokenizer.py
    executor: Executor  # scheduler.plan.Executor
    backend: str  # "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"
    limits: StepLimits  # the largest step, given to the executor and read by the scheduler

    @property
    def max_num_tokens(self) -> int:
        return self.limits.max_num_tokens

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


def build_graph(source: ModelSource, dtype: str, options: EngineOptions, digest: str,
                out_dir: Path, rotary_op: bool = False) -> dict[str, Any]:
    """Write the graph and tokenizer of `source` into out_dir; return the manifest."""
    logger.info("building the %s graph of %s (%s) into %s", dtype, source.name, source.path,
                out_dir)
    model = read_source(source, ConsoleProgress(f"loading {source.name}"))
    spec = _builder().build_model_graph(model.config, model.weights, out_dir, dtype=dtype,
                                        block_size=options.block_size,
                                        progress=ConsoleProgress(f"building {source.name}"),
                                        blocks=model.blocks,
                                        cpu_precision=options.cpu_precision,
                                        rotary_op=True if rotary_op else None)
    model.tokenizer.save(out_dir)
    return {"name": source.name, "source": str(source.path), "kind": source.kind,
            "config": config_to_json(model.config), "dtype": dtype,
            "block_size": options.block_size, "graph": _graph_manifest(spec),
            "inputs": list(getattr(spec, "input_names", ())),
            "outputs": list(getattr(spec, "output_names", ())),
            "builder_version": builder_version(), "weights_hash": digest}


def _prepare(options: EngineOptions, dtype: str, rotary_op: bool = False
             ) -> tuple[ModelSource, Path]:
    source = resolve_model(options.model)
    digest = weights_hash(source.path)
    key = cache_key(digest, builder_version(), dtype, options.block_size, options.cpu_precision,
                    rotary_op)
    entry = entry_dir(cache_root(options.cache_dir), source.name, key)
    return source, build_entry(entry, lambda tmp: build_graph(source, dtype, options, digest, tmp,
                                                              rotary_op))


def prepare_model(options: EngineOptions) -> Path:
    """Build (or find) the cached ONNX graph for `options`; return its directory."""
    backend = select_backend(options)
    return _prepare(options, resolve_dtype(options, backend), backend.rotary_op)[1]


def check_max_context(options: EngineOptions, config: ModelConfig) -> int:
    limit = config.max_position_embeddings
    if options.max_context is None:
        return limit
    if options.max_context > limit:
        raise ModelError(f"max_context {options.max_context} exceeds the model's maximum "
                         f"context of {limit} tokens")
    return options.max_context


def q4_model_path(entry: Path, manifest: dict[str, Any], options: EngineOptions) -> Path | None:
    """The entry's single-token MatMulNBits graph, when it has one and options want it."""
    name = manifest.get("graph", {}).get("q4_model_file")
    return entry / name if name and options.q4_decode else None


def _executor(backend: BackendChoice, model_path: Path, config: ModelConfig,
              options: EngineOptions, limits: StepLimits, dtype: str,
              single_token_model: Path | None) -> Executor:
    max_context = limits.max_context
    if backend.name == "onnxruntime-cpu":
        from engine.executors.ort import OrtExecutor

        blocks = kv_cache_blocks(options, config, max_context, dtype)
        return OrtExecutor(model_path, config, num_blocks=blocks, block_size=options.block_size,
                           max_context=max_context, providers=backend.providers, kv_dtype=dtype,
                           intra_op_threads=options.cpu_threads,
                           single_token_model=single_token_model)
    blocks = device_kv_blocks(options, config, max_context, dtype)
    if backend.name == "tensorrt":
        from engine.executors.trt import TrtExecutor

        engine_file = None
        if options.engine_dir:  # the built engine, as built: its pool size is capped
            from engine.engine_dir import ENGINE_FILE, read_config

            engine_file = Path(options.engine_dir) / ENGINE_FILE
            blocks = min(blocks, read_config(Path(options.engine_dir)).max_kv_blocks)
        return TrtExecutor(model_path, config, num_blocks=blocks, block_size=options.block_size,
                           max_context=max_context, engine_file=engine_file,
                           limits=limits, cuda_graphs=options.cuda_graphs)
    from engine.executors.ort_cuda import OrtCudaExecutor

    return OrtCudaExecutor(model_path, config, num_blocks=blocks,
                           block_size=options.block_size, max_context=max_context,
                           limits=limits, cuda_graphs=options.cuda_graphs)


def _start(backend: BackendChoice, options: EngineOptions) -> LoadedModel:
    dtype = resolve_dtype(options, backend)
    if dtype not in backend.dtypes:
        raise ModelError(f"{backend.name} cannot run {dtype} graphs (it runs "
                         f"{', '.join(backend.dtypes)}); choose another --dtype, or a GPU backend")
    entry = (Path(options.engine_dir) if options.engine_dir
             else _prepare(options, dtype, backend.rotary_op)[1])
    manifest = read_manifest(entry)
    config = config_from_json(manifest["config"])
    limits = decide_limits(options.max_batch_size, options.max_num_tokens,
                           backend.max_num_tokens, check_max_context(options, config))
    logger.info("starting %s on %s (%s), block size %d, step limits %s (pid %d)",
                manifest["name"], backend.name, dtype, options.block_size, limits, os.getpid())
    executor = _executor(backend, entry / MODEL_FILE, config, options, limits, dtype,
                         q4_model_path(entry, manifest, options))
    return LoadedModel(name=manifest["name"], config=config, tokenizer=Tokenizer.from_dir(entry),
                       executor=executor, backend=backend.name, limits=limits)


def load_model(options: EngineOptions) -> LoadedModel:
    """Prepare the graph, then start the best executor that runs here over a sized KV pool.

    With `--backend auto`, an executor that refuses this machine (e.g. TensorRT for RTX on an
    sm_90 GPU) is logged in one line and the next candidate is tried."""
    if options.engine_dir:
        from engine.engine_dir_here import engine_dir_options

        options, candidates = engine_dir_options(options)
    else:
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
