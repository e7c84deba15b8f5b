"""Which executor runs here: TensorRT, ONNX Runtime CUDA or ONNX Runtime CPU, best first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.config import ModelError

if TYPE_CHECKING:
    from engine.options import EngineOptions


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The seam where GPU backends plug in: which executor runs, and in which dtype."""

    name: str  # "onnxruntime-cpu" | "onnxruntime-cuda" | "tensorrt"
    providers: tuple[str, ...]  # onnxruntime execution providers, in preference order
    dtype: str  # graph dtype the backend runs best with when options.dtype == "auto"
    # the scheduler's token budget per step when the user sets none (None: the scheduler's own
    # default). CPU: a prefill step is compute-bound, its cost per token flat from a few dozen
    # rows up, so 256-token chunks prefill as fast as 2048-token ones while running decodes
    # stall for ~0.2 s instead of ~1.5 s (measured: 16 concurrent SmolLM2 requests, TTFT p50
    # 579 -> 372 ms, same tok/s; bench/results/engine_batching.md)
    max_num_tokens: int | None = None
    # graph dtypes the executor can run (onnxruntime's CPU kernels have no bfloat16 MatMul,
    # Where, ...: a bf16 graph fails to load there)
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    # RoPE as the opset-23 RotaryEmbedding op in every graph it runs (one kernel per Q and K
    # instead of the Slice/Mul/Add decomposition); TensorRT keeps the decomposition
    rotary_op: bool = False


def _gpu_reason() -> str | None:
    """None when a CUDA device is usable through cuda-python, else why not."""
    import importlib.util

    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed (pip install -e '.[gpu]' in the trtserve checkout)"
    from engine.device.cuda import gpu_available

    return gpu_available()


def _ort_cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# compute capabilities TensorRT-RTX refuses to build for (measured: sm_90, H100 and H200, where
# `auto` spent ~12 s building an engine before falling back); full TensorRT runs there
RTX_REFUSED_CAPABILITIES = frozenset({(9, 0)})


def _tensorrt_reason() -> str | None:
    """None when a TensorRT module imports and can run on device 0, else why not."""
    from engine.executors.trt_build import TensorRTError, import_tensorrt

    try:
        trt = import_tensorrt()
    except TensorRTError as exc:
        return str(exc)
    if trt.flavor == "tensorrt_rtx":
        return _rtx_capability_reason(_device_capability())
    return None


def _device_capability() -> tuple[int, int]:
    from engine.device.cuda import device_compute_capability

    return device_compute_capability(0)


def _rtx_capability_reason(capability: tuple[int, int]) -> str | None:
    if capability not in RTX_REFUSED_CAPABILITIES:
        return None
    major, minor = capability
    return (f"tensorrt_rtx does not run on compute capability {major}.{minor} (sm_{major}{minor}: "
            "H100/H200); install full TensorRT (pip install tensorrt) or use --backend onnxruntime")


TENSORRT = BackendChoice("tensorrt", (), "float16")
ORT_CUDA = BackendChoice("onnxruntime-cuda", ("CUDAExecutionProvider",), "float16",
                         rotary_op=True)
ORT_CPU = BackendChoice("onnxruntime-cpu", ("CPUExecutionProvider",), "float32",
                        max_num_tokens=256, dtypes=("float32", "float16"))


def backend_candidates(requested: str) -> list[BackendChoice]:
    """Executors to try, best first. `auto`: TensorRT, then ONNX Runtime CUDA on a GPU, then
    ONNX Runtime on CPU. An explicit `tensorrt` that cannot run here is one clear ModelError."""
    gpu_reason = _gpu_reason()
    if requested == "tensorrt":
        reason = gpu_reason or _tensorrt_reason()
        if reason:
            raise ModelError(f"--backend tensorrt cannot run here: {reason}; "
                             "start the server with --backend onnxruntime instead")
        return [TENSORRT]
    gpu: list[BackendChoice] = []
    if gpu_reason is None:
        if requested == "auto" and _tensorrt_reason() is None:
            gpu.append(TENSORRT)
        if _ort_cuda_available():
            gpu.append(ORT_CUDA)
    return [*gpu, ORT_CPU]


def select_backend(options: EngineOptions) -> BackendChoice:
    """The preferred executor for this machine (the first candidate)."""
    return backend_candidates(options.backend)[0]


def resolve_dtype(options: EngineOptions, backend: BackendChoice) -> str:
    """The graph dtype: the user's, or the backend's best when options.dtype is auto."""
    return backend.dtype if options.dtype == "auto" else options.dtype
