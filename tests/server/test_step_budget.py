"""The scheduler's token budget per step: the user's setting, else the backend's, else the
scheduler's default; the CPU backend asks for small prefill chunks."""

from __future__ import annotations

from engine.backends import ORT_CPU, ORT_CUDA, TENSORRT
from scheduler.config import SchedulerConfig
from server.model_loader import scheduler_config
from server.settings import ServerSettings


def test_unset_budget_is_the_backends_then_the_schedulers() -> None:
    settings = ServerSettings()
    assert settings.max_num_tokens is None
    assert scheduler_config(settings, ORT_CPU.max_num_tokens).max_num_tokens == 256
    for gpu in (ORT_CUDA, TENSORRT):
        assert (scheduler_config(settings, gpu.max_num_tokens).max_num_tokens
                == SchedulerConfig().max_num_tokens)


def test_explicit_budget_wins_over_the_backend() -> None:
    settings = ServerSettings(max_num_tokens=1000)
    assert scheduler_config(settings, ORT_CPU.max_num_tokens).max_num_tokens == 1000
