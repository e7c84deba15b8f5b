"""A tiny streaming server on 127.0.0.1 (Starlette + uvicorn in a thread) with known output.

The model name picks the behaviour, on the Triton and the OpenAI routes alike:
- "ok": streams `max_tokens` known tokens, one per event.
- "error": two tokens, then an error event (Triton `{"error"}`; OpenAI `{"error": {...}}`).
- "drop": two tokens, then the connection is cut mid-stream (no terminating chunk).
- "http503": answers 503 with a JSON error body.
- "nodone": like "ok" but an OpenAI stream ends without `data: [DONE]`.
- "slow": waits 5 s before the first token (for client timeouts).
- "flaky": cycles ok, error, drop, http503 over successive requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

logger = logging.getLogger(__name__)

_FLAKY_CYCLE = ("ok", "error", "drop", "http503")


class StreamCut(RuntimeError):
    """Raised inside a response body to make uvicorn abort the connection."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeServer:
    """Counts what it did, so tests can compare the benchmark's numbers with the truth."""

    def __init__(self, tokens: list[str], token_delay_s: float = 0.002) -> None:
        self.tokens = tokens
        self.token_delay_s = token_delay_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self.reset()
        routes = [Route("/v2/models/{model}/generate_stream", self._triton, methods=["POST"]),
                  Route("/v1/completions", self._openai, methods=["POST"]),
                  Route("/v1/chat/completions", self._openai, methods=["POST"])]
        config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=self.port,
                                log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def reset(self) -> None:
        with self._lock:
            self.payloads: list[dict[str, Any]] = []
            self.paths: list[str] = []
            self.tokens_sent = 0
            self.completed = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self._flaky = 0

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _behaviour(self, model: str) -> str:
        if model != "flaky":
            return model
        with self._lock:
            kind = _FLAKY_CYCLE[self._flaky % len(_FLAKY_CYCLE)]
            self._flaky += 1
        return kind

    async def _accept(self, request: Request) -> dict[str, Any]:
        payload = json.loads(await request.body())
        with self._lock:
            self.payloads.append(payload)
            self.paths.append(request.url.path)
        return dict(payload)

    async def _triton(self, request: Request) -> Response:
        payload = await self._accept(request)
        kind = self._behaviour(request.path_params["model"])
        if kind == "http503":
            return JSONResponse({"error": "Exceeds maximum queue size"}, status_code=503)
        frames = (json.dumps({"model_name": "ensemble", "text_output": t}) for t in
                  self._texts(kind, int(payload["max_tokens"])))
        error = json.dumps({"error": "in ensemble 'ensemble', boom"})
        return self._sse(kind, frames, error, done=False)

    async def _openai(self, request: Request) -> Response:
        payload = await self._accept(request)
        kind = self._behaviour(str(payload["model"]))
        if kind == "http503":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        chat = request.url.path.endswith("/chat/completions")
        frames = (json.dumps({"choices": [{"index": 0, "delta": {"content": t}} if chat
                                          else {"index": 0, "text": t}]})
                  for t in self._texts(kind, int(payload["max_tokens"])))
        error = json.dumps({"error": {"message": "boom", "type": "server_error"}})
        return self._sse(kind, frames, error, done=kind != "nodone")

    def _texts(self, kind: str, max_tokens: int) -> list[str]:
        n = min(2, max_tokens) if kind in ("error", "drop") else max_tokens
        return [self.tokens[k % len(self.tokens)] for k in range(n)]

    def _sse(self, kind: str, frames: Any, error: str, done: bool) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if kind == "slow":
                    await asyncio.sleep(5)
                for frame in frames:
                    await asyncio.sleep(self.token_delay_s)
                    with self._lock:
                        self.tokens_sent += 1
                    yield f"data: {frame}\n\n".encode()
                if kind == "drop":
                    raise StreamCut("cut")
                if kind == "error":
                    yield f"data: {error}\n\n".encode()
                    return
                if done:
                    yield b"data: [DONE]\n\n"
                with self._lock:
                    self.completed += 1
            finally:
                with self._lock:
                    self.in_flight -= 1

        return StreamingResponse(body(), media_type="text/event-stream")
