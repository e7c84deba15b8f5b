"""Serving a `trtserve build` directory on this machine: what the machine offers (TensorRT flavour
and version, GPU and its architecture), the one-line refusal of an engine built for something
else, and the EngineOptions/backends that load the directory as built (no rebuild)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.engine_dir import (
    BuildConfig,
    EngineDirError,
    check_backend_dtype,
    check_runtime,
    read_config,
)

if TYPE_CHECKING:
    from engine.backends import BackendChoice
    from engine.options import EngineOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Machine:
    """The TensorRT and GPU found here (None where absent)."""

    trt_flavor: str | None = None
    trt_version: str | None = None
    trt_archs: tuple[str, ...] | None = None  # the archs this flavour runs; None: any
    gpu: str | None = None
    cc: tuple[int, int] | None = None


def _gpu() -> tuple[str | None, tuple[int, int] | None]:
    if importlib.util.find_spec("cuda") is None:
        return None, None
    from engine.device.cuda import CudaContext, gpu_available

    if gpu_available() is not None:
        return None, None
    ctx = CudaContext(0)
    try:
        return ctx.name, ctx.compute_capability
    finally:
        ctx.close()


def rtx_archs(module: object) -> tuple[str, ...]:
    """The SMs TensorRT for RTX lists (it builds for and runs on these only)."""
    names = dir(module.ComputeCapability)
    return tuple(sorted((n.lower() for n in names if n.startswith("SM") and n[2:].isdigit()),
                        key=lambda n: int(n[2:])))


def probe_machine() -> Machine:
    from engine.executors.trt_build import TensorRTError, import_tensorrt

    gpu, cc = _gpu()
    try:
        trt = import_tensorrt()
    except TensorRTError:
        return Machine(gpu=gpu, cc=cc)
    archs = rtx_archs(trt.module) if trt.flavor == "tensorrt_rtx" else None
    return Machine(trt.flavor, trt.version, archs, gpu, cc)


def check_engine_dir(directory: Path, backend: str = "auto", dtype: str = "auto",
                     machine: Machine | None = None) -> BuildConfig:
    """config.json of `directory`, or EngineDirError (one line) when this machine cannot serve it
    as built. Reads no weights: call it before loading anything."""
    config = read_config(directory)
    check_backend_dtype(config, backend, dtype)
    if config.backend == "tensorrt":
        here = machine or probe_machine()
        check_runtime(config, directory, trt_flavor=here.trt_flavor, trt_version=here.trt_version,
                      gpu=here.gpu, cc=here.cc, supported_archs=here.trt_archs)
    return config


def engine_dir_options(options: EngineOptions) -> tuple[EngineOptions, list[BackendChoice]]:
    """The options and executors that serve options.engine_dir as built: its dtype, block size,
    CPU precision and max model length; its backend (onnxruntime: CUDA where usable, else CPU)."""
    from engine.backends import TENSORRT, backend_candidates

    directory = Path(options.engine_dir or "")
    config = check_engine_dir(directory, options.backend, options.dtype)
    max_context = options.max_context or config.max_model_len
    if max_context > config.max_model_len:
        raise EngineDirError(f"max context {max_context} exceeds the engine's max_model_len of "
                             f"{config.max_model_len}")
    blocks = options.kv_cache_blocks
    if config.backend == "tensorrt" and blocks is not None and blocks > config.max_kv_blocks:
        raise EngineDirError(f"--kv-cache-blocks {blocks} exceeds the engine's max_kv_blocks of "
                             f"{config.max_kv_blocks}")
    adopted = dataclasses.replace(options, dtype=config.dtype, block_size=config.block_size,
                                  max_context=max_context, backend=config.backend,
                                  cpu_precision=config.cpu_precision)
    candidates = [TENSORRT] if config.backend == "tensorrt" \
        else backend_candidates("onnxruntime")
    logger.info("serving the %s build in %s as built (%s, max model len %d)", config.backend,
                directory, config.dtype, max_context)
    return adopted, candidates
