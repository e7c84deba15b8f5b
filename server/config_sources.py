"""Where the server's engine/scheduler defaults come from: the dataclasses that define them once.

`scheduler.config.SchedulerConfig` and `engine.runtime.EngineOptions` are owned by other packages.
While either is not in the tree yet, a stand-in mirroring docs/interfaces.md is used so the server
can be built and tested; it disappears as soon as the real module imports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

try:
    from scheduler.config import SchedulerConfig
except ModuleNotFoundError as exc:  # pragma: no cover - only before the scheduler lands
    if exc.name != "scheduler.config":
        raise

    @dataclass(frozen=True, slots=True)
    class SchedulerConfig:  # type: ignore[no-redef]
        max_batch_size: int = 64
        max_num_tokens: int = 2048
        max_queue_size: int = 256
        policy: str = "max_utilization"
        enable_prefix_caching: bool = True
        max_model_len: int | None = None

try:
    from engine.runtime import EngineOptions
except ModuleNotFoundError as exc:  # pragma: no cover - only before the engine lands
    if exc.name != "engine.runtime":
        raise

    @dataclass(frozen=True, slots=True)
    class EngineOptions:  # type: ignore[no-redef]
        model: str = "smollm2-135m-instruct"
        backend: str = "auto"
        engine_dir: str | None = None
        block_size: int = 16
        kv_cache_blocks: int | None = None
        kv_cache_fraction: float = 0.1
        dtype: str = "auto"
        max_context: int | None = None

SCHEDULER_DEFAULTS = SchedulerConfig()
ENGINE_DEFAULTS = EngineOptions()

__all__ = ["ENGINE_DEFAULTS", "SCHEDULER_DEFAULTS", "EngineOptions", "SchedulerConfig"]
