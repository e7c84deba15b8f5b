"""The model names clients may use: `--served-model-name` (several allowed; the first is the one
listed by /v1/models), else the loaded model's own name (before loading: the --model given)."""

from __future__ import annotations

from server.app_state import AppState


def served_names(state: AppState) -> tuple[str, ...]:
    """Every accepted name, the listed one first."""
    model = state.lifecycle.model
    if model is not None:
        return (model.name, *model.aliases)
    return state.settings.served_model_name or (state.settings.model,)
