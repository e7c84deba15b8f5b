"""CORS (off unless `--cors-origins` is set): Starlette's middleware, with refused preflights
answered as JSON errors like every other error of this server (status 400, as Starlette and
vLLM use; Triton's own HTTP frontend has no CORS at all)."""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from server.errors import ValidationError, error_body

logger = logging.getLogger(__name__)

_BODY_HEADERS = ("content-type", "content-length")


class JsonCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        message = bytes(response.body).decode("utf-8", "replace")
        logger.info("refused CORS preflight from %r: %s", request_headers.get("origin"), message)
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _BODY_HEADERS}
        return Response(error_body(ValidationError(message)), response.status_code,
                        headers=headers, media_type="application/json")
