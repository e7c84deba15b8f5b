"""One taxonomy of client-visible errors, mapped to HTTP in one place (here + app.py handlers)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from scheduler.request import (
    EngineDeadError,
    ParamError,
    QueueFullError,
    RequestError,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # Retry-After header value on every 503


class ApiError(Exception):
    """An error whose message is shown to the client as is, with `status`."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param  # the request parameter at fault, when one is (OpenAI's `param`)
        if status is not None:
            self.status = status


class ValidationError(ApiError):
    status = 400


class UnknownModelError(ApiError):
    status = 404


class BodyTooLargeError(ApiError):
    status = 413


class BodyTimeoutError(ApiError):
    """The client did not send its whole request body in time; the connection is closed."""

    status = 408


class UnauthorizedError(ApiError):
    status = 401


class UnavailableError(ApiError):
    """Queue full, draining, engine dead, queue timeout: the client may retry elsewhere/later."""

    status = 503


class NotImplementedApiError(ApiError):
    status = 501


def param_error(exc: ParamError, names: Mapping[str, str]) -> ValidationError:
    """A SamplingParams bound (scheduler/validation.py) said with the route's name of the input:
    `names` maps SamplingParams fields to it (a field not listed keeps its own name)."""
    name = names.get(exc.field, exc.field)
    return ValidationError(exc.message(name), param=name)


def to_api_error(exc: BaseException) -> ApiError:
    """Map scheduler/engine exceptions onto the taxonomy (the one place this is decided)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestError):
        return ValidationError(str(exc))
    if isinstance(exc, QueueFullError):
        return UnavailableError(f"Exceeds maximum queue size: {exc}" if str(exc) else
                                "Exceeds maximum queue size")
    if isinstance(exc, EngineDeadError):
        return UnavailableError(f"engine is dead: {exc}")
    logger.exception("unexpected error", exc_info=exc)
    return ApiError("internal error", status=500)


def error_headers(err: ApiError) -> dict[str, str]:
    if err.status == 503:
        return {"Retry-After": str(RETRY_AFTER_S)}
    if err.status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if err.status == 408:  # the rest of the body may still arrive: never reuse the connection
        return {"Connection": "close"}
    return {}


def error_body(err: ApiError, *, openai: bool = False) -> bytes:
    """`{"error": "..."}` (Triton/KServe) or the OpenAI error object on /v1 routes."""
    if openai:
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        payload: object = {"error": {"message": err.message, "type": kind, "param": err.param,
                                     "code": err.status}}
    else:
        payload = {"error": err.message}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "backslashreplace")
