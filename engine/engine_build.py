"""`trtserve build`: the graph, the TensorRT engine (`rank0.engine`), the tokenizer and
config.json of one model, written into an output directory (engine/engine_dir.py describes it).

The TensorRT engine is built with one optimization profile whose maxima are the build's limits
(batch, tokens per step, model length, KV pool). TensorRT for RTX builds without a GPU for the
architectures it lists; on a GPU the default target is that GPU.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.cache import MANIFEST_FILE, config_from_json, weights_hash, write_manifest
from engine.config import ModelError
from engine.dtypes import CPU_PRECISIONS, EXACT
from engine.engine_dir import (
    CONFIG_FILE,
    ENGINE_FILE,
    BuildConfig,
    TensorRTTarget,
    write_config,
)
from engine.registry import DEFAULT_MODEL, resolve_model
from scheduler.config import SchedulerConfig

if TYPE_CHECKING:
    from engine.executors.trt_build import TrtModule


_S = SchedulerConfig()
DEFAULT_DTYPES = {"tensorrt": "float16", "onnxruntime": "float32"}
Stage = Callable[[str], None]  # called with the name of each stage as it starts


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """`trtserve build` flags; each default is defined here once (the CLI reads them)."""

    output_dir: str
    model: str = DEFAULT_MODEL
    backend: str = "tensorrt"  # tensorrt | onnxruntime
    dtype: str = "auto"  # auto: float16 for tensorrt, float32 for onnxruntime
    max_batch_size: int = _S.max_batch_size
    max_num_tokens: int = _S.max_num_tokens
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    block_size: int = 16
    max_kv_blocks: int | None = None  # None: max_batch_size sequences of max_model_len
    gpu_archs: tuple[str, ...] = ()  # () : this GPU, else every arch TensorRT for RTX lists
    cpu_precision: str = EXACT  # the 4-bit single-token graph's activations: exact | fast

    def __post_init__(self) -> None:
        if self.backend not in DEFAULT_DTYPES:
            raise ValueError(f"backend must be tensorrt or onnxruntime, got {self.backend!r}")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"cpu_precision must be one of {CPU_PRECISIONS}, "
                             f"got {self.cpu_precision!r}")
        for name in ("max_batch_size", "max_num_tokens", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_model_len", "max_kv_blocks"):
            if (getattr(self, name) or 1) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def resolved_dtype(self) -> str:
        return DEFAULT_DTYPES[self.backend] if self.dtype == "auto" else self.dtype


def _prepare_output(out: Path) -> None:
    """An empty directory, or one holding a previous build (replaced): never foreign files."""
    if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).exists() \
            and not (out / MANIFEST_FILE).exists():
        raise ModelError(f"--output-dir {out} is not empty and holds no trtserve build; "
                         "choose an empty or new directory")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _targets(opts: BuildOptions, trt: TrtModule) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(builder targets, recorded archs) for --gpu-arch / this GPU / all RTX archs."""
    from engine.engine_dir import sm_name
    from engine.engine_dir_here import probe_machine, rtx_archs

    if opts.gpu_archs:
        archs = tuple(a.lower().replace("_", "") for a in opts.gpu_archs)
    else:
        cc = probe_machine().cc
        if cc is not None:
            archs = (sm_name(cc),)
            if trt.flavor == "tensorrt":
                return ("CURRENT",), archs
        elif trt.flavor == "tensorrt_rtx":
            archs = rtx_archs(trt.module)
        else:
            raise ModelError("TensorRT builds for the GPU it runs on and none is usable here; "
                             "build on the GPU, or install TensorRT for RTX and pass --gpu-arch")
    return tuple(a.upper() for a in archs), archs


def _tensorrt_first(opts: BuildOptions) -> tuple[TrtModule, tuple[str, ...], tuple[str, ...]]:
    """(TensorRT, builder targets, recorded archs), checked before the graph is built, so a
    missing TensorRT or GPU costs a second, not a graph build."""
    from engine.executors.trt_build import import_tensorrt

    trt = import_tensorrt()
    return (trt, *_targets(opts, trt))


def _build_trt(out: Path, config: BuildConfig,
               trt_targets: tuple[TrtModule, tuple[str, ...], tuple[str, ...]]) -> TensorRTTarget:
    from engine.builder import MODEL_FILE
    from engine.device.step_io import StepLimits
    from engine.executors.trt import profile_dims
    from engine.executors.trt_build import build_serialized

    trt, targets, archs = trt_targets
    manifest_config = config_from_json(json.loads((out / MANIFEST_FILE).read_text())["config"])
    limits = StepLimits(config.max_num_tokens, config.max_batch_size, config.max_model_len)
    dims = profile_dims(manifest_config, limits, config.block_size, config.max_kv_blocks)
    blob = build_serialized(out / MODEL_FILE, dims, targets=targets, trt=trt)
    (out / ENGINE_FILE).write_bytes(blob)
    return TensorRTTarget(trt.flavor, trt.version, archs)


def _limits(opts: BuildOptions, max_positions: int) -> tuple[int, int]:
    """(max_model_len, max_kv_blocks) checked against the model."""
    max_len = opts.max_model_len or max_positions
    if max_len > max_positions:
        raise ModelError(f"--max-model-len {max_len} exceeds the model's maximum context of "
                         f"{max_positions} tokens")
    blocks = opts.max_kv_blocks or opts.max_batch_size * math.ceil(max_len / opts.block_size)
    return max_len, blocks


def build_engine_dir(opts: BuildOptions, stage: Stage | None = None) -> BuildConfig:
    """Build everything into opts.output_dir; return what config.json records."""
    from engine.options import EngineOptions
    from engine.prepare import build_graph, builder_version

    stage = stage or (lambda name: None)
    started = time.monotonic()
    out = Path(opts.output_dir).expanduser()
    source = resolve_model(opts.model)
    dtype = opts.resolved_dtype
    trt_targets = _tensorrt_first(opts) if opts.backend == "tensorrt" else None
    _prepare_output(out)
    stage("graph")
    graph_opts = EngineOptions(model=opts.model, dtype=dtype, block_size=opts.block_size,
                               cpu_precision=opts.cpu_precision)
    manifest = build_graph(source, dtype, graph_opts, weights_hash(source.path), out)
    write_manifest(out, manifest)
    max_len, blocks = _limits(opts, int(manifest["config"]["max_position_embeddings"]))
    config = BuildConfig(model=opts.model, name=source.name, backend=opts.backend, dtype=dtype,
                         max_batch_size=opts.max_batch_size, max_num_tokens=opts.max_num_tokens,
                         max_model_len=max_len, block_size=opts.block_size,
                         max_kv_blocks=blocks, builder_version=builder_version(),
                         cpu_precision=opts.cpu_precision)
    trt = None
    if trt_targets is not None:
        stage("engine")
        trt = _build_trt(out, config, trt_targets)
    stage("config")
    extra = {"source": str(source.path), "build_seconds": round(time.monotonic() - started, 1)}
    config = replace(config, tensorrt=trt, extra=extra)
    write_config(out, config)
    return config
