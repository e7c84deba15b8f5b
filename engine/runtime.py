"""The server's one entry into the engine: options in, a loaded model (tokenizer + executor) out.

`load_model` tries the backends that can run here, best first (engine/backends.py), and starts
the first that does: its graph (engine/prepare.py: built or found in the cache, or an engine
directory as built), the step limits (engine/limits.py) and a KV pool sized for it
(engine/kv_sizing.py). See docs/interfaces.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.backends import BackendChoice, backend_candidates, resolve_dtype
from engine.cache import config_from_json, read_manifest
from engine.config import ModelConfig, ModelError
from engine.kv_sizing import pool_blocks
from engine.limits import StepLimits, check_max_context, decide_limits
from engine.options import EngineOptions
from engine.prepare import graph_entry, graph_files
from engine.tokenizer import Tokenizer
from scheduler.plan import Executor

logger = logging.getLogger(__name__)


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


def _executor(backend: BackendChoice, model_path: Path, config: ModelConfig,
              options: EngineOptions, limits: StepLimits, dtype: str,
              single_token_model: Path | None) -> Executor:
    max_context = limits.max_context
    blocks = pool_blocks(backend, options, config, max_context, dtype)
    if backend.name == "onnxruntime-cpu":
        from engine.executors.ort import OrtExecutor

        return OrtExecutor(model_path, config, num_blocks=blocks, block_size=options.block_size,
                           max_context=max_context, providers=backend.providers, kv_dtype=dtype,
                           intra_op_threads=options.cpu_threads,
                           single_token_model=single_token_model)
    if backend.name == "tensorrt":
        from engine.engine_dir import ENGINE_FILE
        from engine.executors.trt import TrtExecutor

        # an engine directory is served as built; else the engine is built next to the graph
        engine_file = Path(options.engine_dir) / ENGINE_FILE if options.engine_dir else None
        return TrtExecutor(model_path, config, num_blocks=blocks, block_size=options.block_size,
                           max_context=max_context, engine_file=engine_file,
                           limits=limits, cuda_graphs=options.cuda_graphs)
    from engine.executors.ort_cuda import OrtCudaExecutor

    return OrtCudaExecutor(model_path, config, num_blocks=blocks,
                           block_size=options.block_size, max_context=max_context,
                           limits=limits, cuda_graphs=options.cuda_graphs,
                           device_sampling=options.device_sampling)


def _start(backend: BackendChoice, options: EngineOptions) -> LoadedModel:
    dtype = resolve_dtype(options, backend)
    if dtype not in backend.dtypes:
        raise ModelError(f"{backend.name} cannot run {dtype} graphs (it runs "
                         f"{', '.join(backend.dtypes)}); choose another --dtype, or a GPU backend")
    entry = (Path(options.engine_dir) if options.engine_dir
             else graph_entry(options, dtype, backend.rotary_op))
    manifest = read_manifest(entry)
    config = config_from_json(manifest["config"])
    limits = decide_limits(options.max_batch_size, options.max_num_tokens,
                           backend.max_num_tokens, check_max_context(options, config))
    logger.info("starting %s on %s (%s), block size %d, step limits %s (pid %d)",
                manifest["name"], backend.name, dtype, options.block_size, limits, os.getpid())
    model_path, single_token_model = graph_files(entry, manifest, options)
    executor = _executor(backend, model_path, config, options, limits, dtype, single_token_model)
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
