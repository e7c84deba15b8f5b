"""KServe v2 health/metadata (docs/triton-generate.md §3), /metrics, and a JSON scheduler-stats
route.

The health and model-ready routes also answer HEAD (status only), for load balancers.
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.app_state import get_state
from server.errors import NotImplementedApiError, ValidationError
from server.api.json_body import parse_json_body
from server.api.openapi_docs import REPOSITORY_INDEX_BODY
from server.api.sse import json_response
from server.api.triton.routes import resolve_model
from server.models import triton_names
from server.api.triton.schema import MODEL_VERSION, model_config, model_metadata

router = APIRouter()
SERVER_VERSION = "2.59.0"
EXTENSIONS = ["classification", "sequence", "model_repository", "schedule_policy",
              "model_configuration", "parameters", "statistics", "generate"]


def _empty(status: int) -> Response:
    return Response(b"", status, media_type="text/plain")


@router.get("/v2/health/live")
@router.head("/v2/health/live", include_in_schema=False)
async def health_live(request: Request) -> Response:
    lc = get_state(request).lifecycle
    if lc.live:
        return _empty(200)
    return json_response({"error": f"engine is dead: {lc.failure}"}, 503)


@router.get("/v2/health/ready")
@router.head("/v2/health/ready", include_in_schema=False)
async def health_ready(request: Request) -> Response:
    return _empty(200) if get_state(request).lifecycle.ready else _empty(503)


@router.get("/v2")
async def server_metadata() -> Response:
    return json_response({"name": "triton", "version": SERVER_VERSION, "extensions": EXTENSIONS})


@router.get("/v2/models/{model_name}")
@router.get("/v2/models/{model_name}/versions/{version}")
async def model_meta(request: Request, model_name: str, version: str | None = None) -> Response:
    name = resolve_model(get_state(request), model_name, version)
    return json_response(model_metadata(name, version))


@router.get("/v2/models/{model_name}/ready")
@router.head("/v2/models/{model_name}/ready", include_in_schema=False)
@router.get("/v2/models/{model_name}/versions/{version}/ready")
@router.head("/v2/models/{model_name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(request: Request, model_name: str, version: str | None = None) -> Response:
    state = get_state(request)
    resolve_model(state, model_name, version)
    if state.lifecycle.ready:
        return _empty(200)
    return json_response({"error": "Model version not ready"}, 400)


@router.get("/v2/models/{model_name}/config")
@router.get("/v2/models/{model_name}/versions/{version}/config")
async def model_conf(request: Request, model_name: str, version: str | None = None) -> Response:
    state = get_state(request)
    name = resolve_model(state, model_name, version)
    return json_response(model_config(name, state.settings.max_batch_size))


@router.post("/v2/models/{model_name}/infer")
@router.post("/v2/models/{model_name}/versions/{version}/infer")
async def infer(request: Request, model_name: str, version: str | None = None) -> Response:
    """Triton's answer for decoupled (streaming) models, which the served ensemble is."""
    resolve_model(get_state(request), model_name, version)
    raise NotImplementedApiError(
        "HTTP end point doesn't support models with decoupled transaction policy")


def _ready_only(raw: bytes) -> bool:
    """The index request's `ready` flag (a large body is parsed in a prep worker)."""
    ready = parse_json_body(raw).get("ready", False)
    if not isinstance(ready, bool):
        raise ValidationError("'ready' must be a boolean")
    return ready


@router.post("/v2/repository/index", openapi_extra={"requestBody": REPOSITORY_INDEX_BODY})
async def repository_index(request: Request) -> Response:
    state = get_state(request)
    ready_only = await state.prep.parse(_ready_only, await request.body())
    st = "READY" if state.lifecycle.ready else "UNAVAILABLE"
    entries = []
    for name in triton_names(state):
        if ready_only and st != "READY":
            continue
        entry = {"name": name, "version": MODEL_VERSION, "state": st}
        if st != "READY":
            entry["reason"] = state.lifecycle.phase.value
        entries.append(entry)
    return json_response(entries)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = await get_state(request).metrics.exposition_async()
    return Response(body, media_type=content_type)


@router.get("/v2/trtserve/stats")
async def scheduler_stats(request: Request) -> Response:
    """Latest SchedulerStats of the engine loop plus in-flight count (debugging, leak checks)."""
    state = get_state(request)
    model = state.lifecycle.model
    stats = dataclasses.asdict(model.loop.stats()) if model is not None else None
    return json_response({"phase": state.lifecycle.phase.value, "active_requests":
                          len(state.lifecycle.requests), "scheduler": stats})
