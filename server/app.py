"""The FastAPI app factory: routes, error handlers, guards, and the model-loading lifespan.

`create_app(settings, loader)` takes the loader as a parameter so tests inject a fake engine; the
real loader (model_loader.load_serving_model) builds engine.runtime + scheduler.loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from server.api import kserve as routes_kserve, root as routes_root
from server.api.openai import routes as routes_openai
from server.api.triton import routes as routes_triton
from server.app_state import AppState
from server.api.cors import JsonCORSMiddleware
from server.errors import ApiError, ValidationError, error_body, error_headers, to_api_error
from server.request.generation import GenerationService
from server.request.lifecycle import Lifecycle
from server.request.live import LiveRequests
from server.metrics.server_metrics import ServerMetrics
from server.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from server.request.prep import RequestPrep
from server.request.log import RouteContext
from server.serving import ServingModel
from server.settings import ServerSettings
from server.api.triton.schema import ALL_TRITON_MODELS

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=ServerMetrics)
Loader = Callable[[ServerSettings, ServerMetrics], Awaitable[ServingModel]]


def _error_response(request: Request, err: ApiError) -> Response:
    openai = request.url.path.startswith("/v1/")
    return Response(error_body(err, openai=openai), err.status, headers=error_headers(err),
                    media_type="application/json")


def _install_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        return _error_response(request, to_api_error(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error_response(request, ApiError(str(exc.detail), exc.status_code))

    async def validation_error(request: Request, exc: Exception) -> Response:
        return _error_response(request, ValidationError(f"invalid request: {exc}"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, api_error)


async def _load(state: AppState, loader: Loader) -> None:
    try:
        model = await loader(state.settings, state.metrics)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported through health + exit code
        logger.exception("model load failed")
        state.lifecycle.set_dead(f"model load failed: {exc}")
        return
    state.lifecycle.set_ready(model)
    # pushed once by the loop, after every live request got its final ERROR output: no polling
    model.loop.on_death(state.lifecycle.set_dead)


async def stop_model(model: ServingModel | None) -> None:
    """Stop the engine loop (aborting what is left), then free the executor."""
    if model is None:
        return
    try:
        await model.loop.stop()
    finally:
        model.close()


def default_metrics(settings: ServerSettings,
                    cls: type[M] = ServerMetrics) -> M:  # type: ignore[assignment]
    """The registry with the Triton models and the served model's series present from start."""
    served = settings.served_model_name[0] if settings.served_model_name else settings.model
    return cls(list(dict.fromkeys((*ALL_TRITON_MODELS, served))))


@dataclass(frozen=True, slots=True)
class FrontEnd:
    """What makes an app one of the front ends of `--api-server-count` (server/split/serve.py)."""

    metrics: ServerMetrics  # forwards to the engine process, which owns the registry
    request_id_prefix: str  # the first hex digits of its request ids: unique across them
    ready_gate: Callable[[], bool]  # readiness: every front end has the model


def create_app(settings: ServerSettings, loader: Loader, metrics: ServerMetrics | None = None,
               frontend: FrontEnd | None = None) -> FastAPI:
    metrics = (frontend.metrics if frontend else metrics) or default_metrics(settings)
    lifecycle = Lifecycle(LiveRequests(on_count=metrics.set_in_flight))
    lifecycle.ready_gate = frontend.ready_gate if frontend else None
    state = AppState(settings, lifecycle, metrics,
                     GenerationService(lifecycle, metrics, settings.request_timeout,
                                       frontend.request_id_prefix if frontend else ""),
                     RequestPrep(settings.parse_processes, settings.tokenize_threads))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_load(state, loader))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stop_model(lifecycle.model)
            state.prep.close()

    app = FastAPI(title="trtserve", version="0.1.0", lifespan=lifespan,
                  description="Triton/TensorRT-LLM compatible LLM server")
    app.state.trtserve = state
    for module in (routes_root, routes_triton, routes_kserve, routes_openai):
        app.include_router(module.router)
    _install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       body_timeout=settings.body_read_timeout)
    app.add_middleware(RouteContext)  # the route in each finished request's log line
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value())
    if settings.cors_origin_list:
        app.add_middleware(JsonCORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_credentials=False,
                           allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def create_metrics_app(app: FastAPI) -> Callable[..., Awaitable[None]]:
    """The --metrics-port listener: GET /metrics from the same registry; other paths 404."""
    state: AppState = app.state.trtserve

    async def metrics_app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] != "/metrics":
            status, body, ctype = 404, b'{"error":"Not Found"}', "application/json"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, ctype = 405, b'{"error":"Method Not Allowed"}', "application/json"
        else:
            status = 200
            body, ctype = await state.metrics.exposition_async()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return metrics_app
