"""The served model and the names clients may use for it: `--served-model-name` (several allowed;
the first is the one listed by /v1/models and `GET /`), else the loaded model's own name (before
loading: the --model given). Beside them, the Triton ensemble's model names
(`ensemble`, `tensorrt_llm_bls` take the text inputs; the others answer metadata only).
"""

from __future__ import annotations

from server.api.triton.schema import ALL_TRITON_MODELS, TEXT_MODELS
from server.app_state import AppState
from server.errors import UnavailableError
from server.serving import ServingModel


def served_names(state: AppState) -> tuple[str, ...]:
    """Every accepted name of the model itself, the listed one first."""
    model = state.lifecycle.model
    if model is not None:
        return (model.name, *model.aliases)
    return state.settings.served_model_name or (state.settings.model,)


def listed_name(state: AppState) -> str:
    return served_names(state)[0]


def triton_names(state: AppState) -> tuple[str, ...]:
    """Every model name the KServe/Triton routes know."""
    return (*ALL_TRITON_MODELS, *served_names(state))


def takes_text(state: AppState, name: str) -> bool:
    """The name of a model that generates from text (the generate and /v1 routes)."""
    return name in TEXT_MODELS or name in served_names(state)


def loaded_model(state: AppState) -> ServingModel:
    """The served model, for what is checked before admission; 503 while none is loaded."""
    model = state.lifecycle.model
    if model is None:
        raise state.lifecycle.admission_error() or UnavailableError("Server not ready")
    return model
