"""How many KV blocks the pool gets: an exact count, or a share of free host/device memory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import ModelConfig
from engine.engine_dir import read_config

if TYPE_CHECKING:
    from engine.backends import BackendChoice
    from engine.options import EngineOptions


KV_BUDGET_CAP_BYTES = 2 * 1024**3  # host pool never sized beyond this from free memory
FALLBACK_AVAILABLE_BYTES = 2 * 1024**3  # when free memory cannot be read


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


def blocks_that_fit(config: ModelConfig, block_size: int, dtype: str, budget_bytes: int) -> int:
    """How many KV blocks `budget_bytes` of host or device memory holds (at least 1)."""
    return max(1, budget_bytes // config.kv_bytes_per_block(block_size, dtype))


def kv_cache_blocks(options: EngineOptions, config: ModelConfig, max_context: int,
                    dtype: str, available: int | None = None) -> int:
    """options.kv_cache_blocks, or a fraction of free memory (capped), but always room for one
    sequence of max_context tokens."""
    if options.kv_cache_blocks is not None:
        return options.kv_cache_blocks
    free = available_memory_bytes() if available is None else available
    budget = min(int(free * options.kv_cache_fraction), KV_BUDGET_CAP_BYTES)
    blocks = blocks_that_fit(config, options.block_size, dtype, budget)
    return max(blocks, math.ceil(max_context / options.block_size))


def device_kv_blocks(options: EngineOptions, config: ModelConfig, max_context: int,
                     dtype: str) -> int:
    """options.kv_cache_blocks, or kv_cache_fraction of free device memory."""
    if options.kv_cache_blocks is not None:
        return options.kv_cache_blocks
    from engine.device.cuda import CudaContext

    ctx = CudaContext(0)
    try:
        free, _ = ctx.mem_info()
    finally:
        ctx.close()
    blocks = blocks_that_fit(config, options.block_size, dtype,
                             int(free * options.kv_cache_fraction))
    return max(blocks, math.ceil(max_context / options.block_size))


def pool_blocks(backend: BackendChoice, options: EngineOptions, config: ModelConfig,
                max_context: int, dtype: str) -> int:
    """The KV pool of `backend`, in blocks: host memory for onnxruntime CPU, device memory for
    the GPU executors; a TensorRT engine directory caps it at the pool it was built for."""
    if backend.name == "onnxruntime-cpu":
        return kv_cache_blocks(options, config, max_context, dtype)
    blocks = device_kv_blocks(options, config, max_context, dtype)
    if backend.name == "tensorrt" and options.engine_dir:
        blocks = min(blocks, read_config(Path(options.engine_dir)).max_kv_blocks)
    return blocks
