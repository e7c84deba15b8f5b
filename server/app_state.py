"""Everything a route needs, hung on `app.state.trtserve` by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from server.request.generation import GenerationService
from server.request.lifecycle import Lifecycle
from server.metrics.server_metrics import ServerMetrics
from server.request.prep import RequestPrep
from server.settings import ServerSettings


@dataclass(slots=True)
class AppState:
    settings: ServerSettings
    lifecycle: Lifecycle
    metrics: ServerMetrics
    service: GenerationService
    prep: RequestPrep  # parsing/tokenising pools (off the event loop)


def get_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.app.state.trtserve
    return state
