"""How to load a model (`EngineOptions`): each default defined here once; the CLI, the server
settings and the engine's loaders read them from here."""

from __future__ import annotations

from dataclasses import dataclass

from engine.dtypes import CPU_PRECISIONS, DTYPE_NAMES, EXACT
from engine.registry import DEFAULT_MODEL
from scheduler.config import SchedulerConfig

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DTYPES = ("auto", *DTYPE_NAMES)
_SCHED = SchedulerConfig()  # step-limit defaults, defined once there


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How to load a model; each default is defined here once (the CLI reads them from here)."""

    model: str = DEFAULT_MODEL  # registry name, a .gguf path, or an HF directory
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    cache_dir: str | None = None  # cache root override (default ~/.cache/trtserve)
    engine_dir: str | None = None  # a `trtserve build` output directory: served as built
    block_size: int = 16
    kv_cache_blocks: int | None = None  # exact count; None -> from kv_cache_fraction
    kv_cache_fraction: float = 0.1  # of free host/device memory, when blocks not given
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    max_context: int | None = None  # None -> model's max_position_embeddings
    max_batch_size: int = _SCHED.max_batch_size  # sequences per step (executor + scheduler)
    max_num_tokens: int | None = None  # tokens per step; None -> the backend's, else scheduler's
    q4_decode: bool = True  # CPU: single-token steps through the MatMulNBits graph when built
    cuda_graphs: bool = True  # onnxruntime CUDA: decode steps replayed as CUDA graphs
    device_sampling: bool = True  # onnxruntime CUDA: tokens chosen on the GPU (ids cross only)
    cpu_precision: str = EXACT  # that graph's activations: exact (float32) | fast (int8)
    cpu_threads: int | None = None  # onnxruntime CPU intra-op threads; None -> one per core

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
        for name in ("max_context", "max_batch_size", "max_num_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
