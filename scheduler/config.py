"""Scheduler configuration: one frozen dataclass, each default defined once, here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

logger = logging.getLogger(__name__)

POLICIES = ("max_utilization", "guaranteed_no_evict")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How the in-flight batcher admits and runs requests (TensorRT-LLM batch manager knobs)."""

    max_batch_size: int = 64  # sequences per step at most (prefilling + decoding)
    max_num_tokens: int = 2048  # token budget per step; longer prompts prefill in chunks
    max_queue_size: int = 256  # waiting requests at most; 0 -> unbounded
    policy: str = "max_utilization"  # or "guaranteed_no_evict" (TensorRT-LLM names)
    enable_prefix_caching: bool = True  # share full KV blocks of identical prefixes
    max_model_len: int | None = None  # prompt + output tokens at most; None -> executor.max_context

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_num_tokens < 1:
            raise ValueError(f"max_num_tokens must be >= 1, got {self.max_num_tokens}")
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 or None, got {self.max_model_len}")

    def resolve_max_model_len(self, max_context: int) -> int:
        """The effective length cap given the executor's own limit."""
        if self.max_model_len is None:
            return max_context
        return min(self.max_model_len, max_context)


def fit_to_executor(config: SchedulerConfig, executor: Any) -> SchedulerConfig:
    """`config` with max_batch_size / max_num_tokens lowered to the executor's own limits (an
    executor built for a largest step exposes them), so no plan exceeds what it accepts. The
    server builds both from the same options; a lowered value here is logged as a warning."""
    changes: dict[str, int] = {}
    for name in ("max_batch_size", "max_num_tokens"):
        limit = getattr(executor, name, None)
        if isinstance(limit, int) and limit < getattr(config, name):
            logger.warning("%s %d exceeds the executor's limit; using %d", name,
                           getattr(config, name), limit)
            changes[name] = limit
    return replace(config, **changes) if changes else config
