"""`GET /`: a short JSON index (server name, version, model, readiness, routes) that answers 200
whenever the process is up, for clients that poll the base URL."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.api.sse import json_response
from server.app_state import get_state
from server.models import listed_name

router = APIRouter()


def _routes(request: Request) -> list[dict[str, object]]:
    """The documented routes (the app's OpenAPI schema, built once and cached by FastAPI)."""
    paths = request.app.openapi().get("paths", {})
    return [{"path": path, "methods": sorted(m.upper() for m in ops)}
            for path, ops in paths.items()]


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def index(request: Request) -> Response:
    state = get_state(request)
    lc = state.lifecycle
    return json_response({"name": request.app.title, "version": request.app.version,
                          "model": listed_name(state), "phase": lc.phase.value,
                          "ready": lc.ready, "routes": _routes(request)})
