"""A built engine directory (`trtserve build --output-dir DIR`) and the checks `serve --engine-dir
DIR` makes before loading it.

DIR holds what a cache entry holds (model.onnx + data, the tokenizer files, manifest.json), the
TensorRT engine `rank0.engine` (as trtllm-build names it) for the tensorrt backend, and
`config.json`: every build setting plus, for TensorRT, the flavour/version and the GPU
architectures the engine was built for. config.json is written last, so a directory without it is
an interrupted build.

The checks are pure (no GPU, no TensorRT import): the caller passes what this machine has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.config import ModelError
from engine.dtypes import EXACT

CONFIG_FILE = "config.json"
ENGINE_FILE = "rank0.engine"
CONFIG_FORMAT = 1
LIMIT_NAMES = ("max_batch_size", "max_num_tokens", "max_model_len")


class EngineDirError(ModelError):
    """An engine directory that cannot be served here; the message is one line."""


@dataclass(frozen=True, slots=True)
class TensorRTTarget:
    """What a TensorRT engine was built with and for."""

    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # e.g. "1.7.1.116"
    gpu_archs: tuple[str, ...]  # e.g. ("sm86",) or ("sm75", "sm80", ...)

    @property
    def label(self) -> str:
        name = "TensorRT" if self.flavor == "tensorrt" else "TensorRT for RTX"
        return f"{name} {self.version}"


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """config.json: every setting the directory was built with (each default is the builder's)."""

    model: str  # the --model given (registry name, .gguf, HF directory)
    name: str  # canonical model name (the served model id by default)
    backend: str  # "tensorrt" | "onnxruntime"
    dtype: str  # float32 | float16 | bfloat16
    max_batch_size: int
    max_num_tokens: int
    max_model_len: int
    block_size: int
    max_kv_blocks: int  # the largest KV pool the engine's profile accepts
    builder_version: str
    cpu_precision: str = EXACT  # the 4-bit single-token graph's activations (exact | fast)
    tensorrt: TensorRTTarget | None = None
    format: int = CONFIG_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # informational (source, times, ...)

    def limits(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


def write_config(directory: Path, config: BuildConfig) -> Path:
    """Write DIR/config.json atomically (the last file of a build)."""
    part = directory / f"{CONFIG_FILE}.part"
    part.write_text(json.dumps(asdict(config), indent=1) + "\n", encoding="utf-8")
    os.replace(part, directory / CONFIG_FILE)
    return directory / CONFIG_FILE


def read_config(directory: Path) -> BuildConfig:
    """DIR/config.json, or EngineDirError saying what is wrong with DIR."""
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise EngineDirError(f"--engine-dir {directory} is not a directory")
    if not path.is_file():
        raise EngineDirError(f"{directory} has no {CONFIG_FILE}: not a `trtserve build` output "
                             "(or the build was interrupted); run trtserve build again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(BuildConfig)}
        trt = data.get("tensorrt")
        data["tensorrt"] = TensorRTTarget(trt["flavor"], trt["version"],
                                          tuple(trt["gpu_archs"])) if trt else None
        config = BuildConfig(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise EngineDirError(f"unreadable {path}: {exc}") from None
    if config.format != CONFIG_FORMAT:
        raise EngineDirError(f"{path} has format {config.format}; this trtserve reads format "
                             f"{CONFIG_FORMAT}: rebuild with this version's trtserve build")
    return config


def sm_name(cc: tuple[int, int]) -> str:
    return f"sm{cc[0]}{cc[1]}"


def check_runtime(config: BuildConfig, directory: Path, *, trt_flavor: str | None,
                  trt_version: str | None, gpu: str | None, cc: tuple[int, int] | None,
                  supported_archs: tuple[str, ...] | None = None) -> None:
    """Refuse (one line) a TensorRT engine this machine cannot run: no GPU, another TensorRT
    flavour or version, a GPU architecture it was not built for, or one this TensorRT flavour
    does not run at all (`supported_archs`, e.g. TensorRT for RTX has no sm90)."""
    target = config.tensorrt
    if config.backend != "tensorrt" or target is None:
        return
    where = f"engine {directory} was built with {target.label} for {','.join(target.gpu_archs)}"
    if trt_flavor is None or trt_version is None:
        raise EngineDirError(f"{where}, but no TensorRT is installed here; install "
                             f"{target.label} or build with --backend onnxruntime")
    if (trt_flavor, trt_version) != (target.flavor, target.version):
        here = TensorRTTarget(trt_flavor, trt_version, ()).label
        raise EngineDirError(f"{where}, but this machine has {here}; rebuild it here with "
                             "trtserve build")
    if cc is None:
        raise EngineDirError(f"{where}, but no NVIDIA GPU is usable here; serve an onnxruntime "
                             "build (trtserve build --backend onnxruntime)")
    arch = sm_name(cc)
    if supported_archs is not None and arch not in supported_archs:
        raise EngineDirError(f"{where}; this GPU ({gpu}, {arch}) is not one {target.label} runs "
                             f"on (it runs {','.join(supported_archs)}): serve an onnxruntime "
                             "build (trtserve build --backend onnxruntime) instead")
    if arch not in target.gpu_archs:
        raise EngineDirError(f"{where}, not for this GPU ({gpu}, {arch}); rebuild it with "
                             f"trtserve build --gpu-arch {arch}")


def adopt_limits(config: BuildConfig, requested: dict[str, int | None]) -> dict[str, int]:
    """The serving limits for this engine: each unset request takes the engine's value; a request
    above the engine's value is refused (one line naming the flag and the engine's limit)."""
    adopted = config.limits()
    for name, value in requested.items():
        if name not in adopted or value is None:
            continue
        if value > adopted[name]:
            flag = "--" + name.replace("_", "-")
            raise EngineDirError(f"{flag} {value} exceeds the engine's {name} of "
                                 f"{adopted[name]} (built into it by trtserve build); pass at "
                                 f"most {adopted[name]} or rebuild with a larger {flag}")
        adopted[name] = value
    return adopted


BUILD_FLAGS = ("model", "backend", "dtype", "block_size", "cpu_precision")


def check_build_flags(config: BuildConfig, given: Mapping[str, object]) -> None:
    """Serve flags given with --engine-dir that shape the graph or engine (BUILD_FLAGS) must
    match the build: `auto` always does, --model may name the build's --model or its name."""
    for name, value in given.items():
        built = getattr(config, name)
        if value in ("auto", built) or (name == "model" and value == config.name):
            continue
        flag = "--" + name.replace("_", "-")
        raise EngineDirError(f"{flag} {value} differs from the engine's {name} {built} (built "
                             f"into it by trtserve build); drop {flag} or rebuild with it")


def check_backend_dtype(config: BuildConfig, backend: str, dtype: str) -> None:
    """--backend/--dtype given with --engine-dir must match the build (auto always does)."""
    check_build_flags(config, {"backend": backend, "dtype": dtype})


def summary(config: BuildConfig, directory: Path) -> str:
    """The one-line summary `trtserve build` prints."""
    trt = f", {config.tensorrt.label} for {','.join(config.tensorrt.gpu_archs)}" \
        if config.tensorrt else ""
    size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    return (f"built {config.name} for {config.backend} ({config.dtype}{trt}): max batch "
            f"{config.max_batch_size}, max tokens/step {config.max_num_tokens}, max model len "
            f"{config.max_model_len}, block {config.block_size}, {size / 1e6:.0f} MB in "
            f"{directory}")
