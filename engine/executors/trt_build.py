"""ONNX graph -> serialized TensorRT engine, with optimization profiles and an on-disk cache.

Works with the full `tensorrt` module (>= 10.15, NVIDIA containers) and with `tensorrt_rtx`
(TensorRT for RTX, installs from PyPI and builds without a GPU). Networks are strongly typed: the
precision is the graph's (build the graph in float16 for an fp16 engine).

The engine is cached next to the ONNX file, keyed by TensorRT flavour + version, the target
compute capability(ies) and the profile ranges, plus the graph file's size and mtime.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

logger = logging.getLogger(__name__)

MIN_TENSORRT = (10, 15)
DimRange = tuple[int, int, int]  # (min, opt, max) of one symbolic dimension


class TensorRTError(RuntimeError):
    """TensorRT is missing, cannot parse/build the graph, or cannot run on this GPU."""


@dataclass(frozen=True, slots=True)
class TrtModule:
    """The imported TensorRT flavour."""

    module: ModuleType
    flavor: str  # "tensorrt" or "tensorrt_rtx"

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    @property
    def label(self) -> str:
        name = "TensorRT" if self.flavor == "tensorrt" else "TensorRT for RTX"
        return f"{name} {self.version}"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def import_tensorrt() -> TrtModule:
    """`tensorrt` when installed and new enough, else `tensorrt_rtx`; TensorRTError if neither."""
    reasons = []
    try:
        trt = importlib.import_module("tensorrt")
        if _version_tuple(trt.__version__) >= MIN_TENSORRT:
            return TrtModule(trt, "tensorrt")
        reasons.append(f"tensorrt {trt.__version__} is older than "
                       f"{'.'.join(map(str, MIN_TENSORRT))}")
    except ImportError as exc:
        reasons.append(f"tensorrt: {exc}")
    try:
        return TrtModule(importlib.import_module("tensorrt_rtx"), "tensorrt_rtx")
    except ImportError as exc:
        reasons.append(f"tensorrt_rtx: {exc}")
    raise TensorRTError("no usable TensorRT (" + "; ".join(reasons)
                        + "); pip install -e '.[tensorrt]' in the trtserve checkout, or use "
                        "--backend onnxruntime")


def make_logger(trt: ModuleType) -> Any:
    """A trt.ILogger that forwards TensorRT's messages to Python logging."""
    levels = {trt.ILogger.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.ERROR: logging.ERROR,
              trt.ILogger.WARNING: logging.WARNING, trt.ILogger.INFO: logging.DEBUG,
              trt.ILogger.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            logger.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _Logger()


def onnx_input_shapes(onnx_path: Path) -> dict[str, list[int | str]]:
    """Graph input name -> dims (int, or the symbolic dim_param name). Weights are not loaded."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    init_names = {t.name for t in model.graph.initializer}
    shapes: dict[str, list[int | str]] = {}
    for value in model.graph.input:
        if value.name in init_names:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]
    return shapes


def profile_shapes(inputs: Mapping[str, list[int | str]], dims: Mapping[str, DimRange]
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Per input: (min, opt, max) shapes from the ranges of its symbolic dims."""
    out = {}
    for name, shape in inputs.items():
        lo, opt, hi = [], [], []
        for dim in shape:
            if isinstance(dim, int) and dim > 0:
                lo.append(dim), opt.append(dim), hi.append(dim)
                continue
            if dim not in dims:
                raise TensorRTError(f"input {name!r}: no profile range for dimension {dim!r} "
                                    f"(have {sorted(dims)})")
            a, b, c = dims[str(dim)]
            if not 0 <= a <= b <= c:
                raise TensorRTError(f"profile range for {dim!r} must be min<=opt<=max: {a, b, c}")
            lo.append(a), opt.append(b), hi.append(c)
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def cache_key(onnx_path: Path, trt: TrtModule, tag: str, dims: Mapping[str, DimRange]) -> str:
    """Short hash of everything that makes an engine reusable; part of the cache file name."""
    stat = onnx_path.stat()
    data = [p for p in onnx_path.parent.iterdir() if p.name.startswith(onnx_path.stem + ".")
            and p.suffix in (".data", ".bin", ".weights")]
    payload = {"flavor": trt.flavor, "version": trt.version, "gpu": tag,
               "dims": {k: list(v) for k, v in sorted(dims.items())},
               "graph": [onnx_path.name, stat.st_size, stat.st_mtime_ns],
               "data": sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in data)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def engine_path(onnx_path: Path, trt: TrtModule, tag: str, dims: Mapping[str, DimRange]
                ) -> Path:
    """<dir>/<stem>.<flavor>-<version>.<gpu tag>.<key>.engine, next to the ONNX file."""
    key = cache_key(onnx_path, trt, tag, dims)
    return onnx_path.with_name(f"{onnx_path.stem}.{trt.flavor}-{trt.version}.{tag}.{key}.engine")


def _set_targets(trt: TrtModule, config: Any, targets: tuple[str, ...]) -> None:
    """TensorRT for RTX: the compute capabilities to build for ("SM86", ... or "CURRENT")."""
    if not hasattr(config, "set_compute_capability"):
        if targets != ("CURRENT",):
            raise TensorRTError(f"{trt.label} builds only for the current GPU, not {targets}")
        return
    config.num_compute_capabilities = len(targets)
    for i, target in enumerate(targets):
        cc = getattr(trt.module.ComputeCapability, target.upper(), None)
        if cc is None or not config.set_compute_capability(cc, i):
            raise TensorRTError(f"{trt.label} cannot target compute capability {target!r}")


def _parse(trt: TrtModule, builder: Any, onnx_path: Path, trt_logger: Any) -> tuple[Any, Any]:
    flags = 1 << int(trt.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.module.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"{trt.label} could not parse {onnx_path}: {errors}")
    return network, parser


def network_io(onnx_path: Path, trt: TrtModule | None = None) -> dict[str, tuple[str, str]]:
    """What TensorRT's parser makes of the graph's I/O: name -> ("input"|"output", dtype)."""
    trt = trt or import_tensorrt()
    trt_logger = make_logger(trt.module)
    network, _parser = _parse(trt, trt.module.Builder(trt_logger), onnx_path, trt_logger)
    out: dict[str, tuple[str, str]] = {}
    for kind, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            tensor = get(i)
            out[tensor.name] = (kind, str(tensor.dtype).rsplit(".", 1)[-1].lower())
    return out


def build_serialized(onnx_path: Path, dims: Mapping[str, DimRange], *,
                     targets: tuple[str, ...] = ("CURRENT",), trt: TrtModule | None = None
                     ) -> bytes:
    """Parse the ONNX graph and build a serialized engine with one optimization profile."""
    trt = trt or import_tensorrt()
    trt_logger = make_logger(trt.module)
    builder = trt.module.Builder(trt_logger)
    network, _parser = _parse(trt, builder, onnx_path, trt_logger)
    config = builder.create_builder_config()
    _set_targets(trt, config, targets)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(onnx_input_shapes(onnx_path), dims).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    logger.info("building %s engine from %s for %s", trt.label, onnx_path, ",".join(targets))
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise TensorRTError(f"{trt.label} failed to build an engine from {onnx_path} "
                            "(see the TensorRT log lines above)")
    return bytes(memoryview(blob))


def _rtx_target(trt: TrtModule, cc: tuple[int, int]) -> str:
    """The GPU's own SM when TensorRT for RTX lists it; otherwise the nearest lower listed SM
    (the runtime then decides at deserialize time: it refuses e.g. sm_90 with a clear None,
    a path measured on the H100, where building for CURRENT is not)."""
    known = sorted((int(n[2:-1]), int(n[-1]), n) for n in dir(trt.module.ComputeCapability)
                   if n.startswith("SM") and n[2:].isdigit())
    lower = [name for major, minor, name in known if (major, minor) <= cc]
    return lower[-1] if lower else "CURRENT"


def build_targets(trt: TrtModule, cc: tuple[int, int] | None,
                  targets: tuple[str, ...] | None) -> tuple[tuple[str, ...], str]:
    """(builder targets, cache tag). On a GPU pass its compute capability `cc`; without one
    (CPU-only build machine, TensorRT for RTX) pass explicit `targets` such as ("SM86",)."""
    if cc is not None:
        tag = f"sm{cc[0]}{cc[1]}"
        if trt.flavor != "tensorrt_rtx":
            return ("CURRENT",), tag
        return (_rtx_target(trt, cc),), tag
    if not targets:
        raise TensorRTError("build targets needed: pass the GPU's compute capability or targets")
    return targets, "+".join(t.lower() for t in targets)


def load_or_build(onnx_path: Path, dims: Mapping[str, DimRange], *,
                  cc: tuple[int, int] | None = None, targets: tuple[str, ...] | None = None,
                  trt: TrtModule | None = None) -> tuple[Path, bytes]:
    """The cached engine for (graph, TensorRT flavour+version, GPU/targets, profile); builds it
    on a miss and writes it atomically next to the graph."""
    trt = trt or import_tensorrt()
    build_for, tag = build_targets(trt, cc, targets)
    path = engine_path(onnx_path, trt, tag, dims)
    if path.exists():
        logger.info("using cached engine %s", path)
        return path, path.read_bytes()
    blob = build_serialized(onnx_path, dims, targets=build_for, trt=trt)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    logger.info("engine cached at %s (%.1f MB)", path, len(blob) / 1e6)
    return path, blob
