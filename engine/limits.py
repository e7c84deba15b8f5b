"""The largest step an engine runs, decided once from the options: the GPU executors size their
step buffers and TensorRT optimisation profiles from it, and the scheduler reads the same
numbers back from the executor (scheduler.config.fit_to_executor), so it never plans a step the
executor refuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.config import ModelConfig, ModelError
from scheduler.config import SchedulerConfig

if TYPE_CHECKING:
    from engine.options import EngineOptions

_SCHED = SchedulerConfig()  # the scheduler's defaults, defined once there


@dataclass(frozen=True, slots=True)
class StepLimits:
    """The largest step a GPU executor accepts (sizes its buffers and TensorRT profile)."""

    max_num_tokens: int = _SCHED.max_num_tokens  # packed tokens per step
    max_batch_size: int = _SCHED.max_batch_size  # sequences per step
    max_context: int = 2048  # tokens per sequence

    def __post_init__(self) -> None:
        for name in ("max_num_tokens", "max_batch_size", "max_context"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def decide_limits(max_batch_size: int, max_num_tokens: int | None, backend_tokens: int | None,
                  max_context: int) -> StepLimits:
    """The options' limits: an unset token budget is the backend's own, else the scheduler's."""
    tokens = max_num_tokens or backend_tokens or _SCHED.max_num_tokens
    return StepLimits(max_num_tokens=tokens, max_batch_size=max_batch_size,
                      max_context=max_context)


def check_max_context(options: EngineOptions, config: ModelConfig) -> int:
    """The context limit: the options' max_context, at most the model's own (the default)."""
    limit = config.max_position_embeddings
    if options.max_context is None:
        return limit
    if options.max_context > limit:
        raise ModelError(f"max_context {options.max_context} exceeds the model's maximum "
                         f"context of {limit} tokens")
    return options.max_context
