"""Streaming HTTP clients for the three routes, on httpx: one request in, one result out.

Every failure ends up in `RequestResult.error_kind`, never as an exception:
`http_<status>` (non-200 answer), `error_event` (an SSE event carrying "error"), `dropped`
(stream cut before its end, or an OpenAI stream without `[DONE]`), `connect` (no connection),
`timeout` (the whole request took longer than the limit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadgen.config import parse_extra_body
from loadgen.dataset import BenchPrompt
from loadgen.sse import SSEParser

logger = logging.getLogger(__name__)

_ERROR_BODY_CHARS = 300


@dataclass(frozen=True, slots=True)
class Delta:
    """What one SSE event means to the benchmark."""

    text: str = ""               # generated text carried by the event
    error: str | None = None     # the server reported an error in-stream
    done: bool = False           # the OpenAI `[DONE]` sentinel


@dataclass(slots=True)
class RequestResult:
    """Timings and outcome of one request. Times are seconds."""

    index: int                          # position in the run's prompt list
    input_len: int                      # prompt tokens (as built)
    expected_output_len: int            # tokens asked for
    start: float = 0.0                  # perf_counter when sent
    ok: bool = False
    error_kind: str | None = None       # see module docstring
    error: str | None = None            # message, truncated
    ttft_s: float | None = None         # send -> first non-empty text
    e2e_s: float = 0.0                  # send -> end of stream (or failure)
    itl_s: list[float] = field(default_factory=list)   # gaps between non-empty text events
    text: str = ""                      # concatenated streamed text
    chunks: list[str] = field(default_factory=list)    # text of each event, in order
    num_events: int = 0                 # SSE events carrying text
    num_output_tokens: int = 0          # sum of re-tokenized `chunks` (filled in later)
    num_output_tokens_concat: int = 0   # re-tokenized `text` as a whole (filled in later)


class Endpoint:
    """How one API shapes the request and reads its events."""

    needs_done = False

    def __init__(self, model: str, extra_body: dict[str, Any] | None = None) -> None:
        self.model = model
        self.extra_body = extra_body or {}  # merged into every request body (sampling, ...)

    def body(self, prompt: BenchPrompt) -> dict[str, Any]:
        """The request body: the endpoint's payload with --extra-body's fields over it."""
        return {**self.payload(prompt), **self.extra_body}

    def path(self) -> str:
        raise NotImplementedError

    def payload(self, prompt: BenchPrompt) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, data: str) -> Delta:
        raise NotImplementedError


class TritonEndpoint(Endpoint):
    """`/v2/models/{model}/generate_stream`, output length forced with min_tokens = max_tokens."""

    def path(self) -> str:
        return f"/v2/models/{self.model}/generate_stream"

    def payload(self, prompt: BenchPrompt) -> dict[str, Any]:
        return {"text_input": prompt.prompt, "max_tokens": prompt.output_len,
                "min_tokens": prompt.output_len, "stream": True,
                "exclude_input_in_output": True, "bad_words": "", "stop_words": ""}

    def parse(self, data: str) -> Delta:
        obj = json.loads(data)
        if "error" in obj:
            return Delta(error=str(obj["error"]))
        text = obj.get("text_output", "")
        return Delta(text="".join(text) if isinstance(text, list) else str(text))


class OpenAICompletionsEndpoint(Endpoint):
    """`/v1/completions`, output length forced with ignore_eos + min_tokens + max_tokens."""

    needs_done = True

    def path(self) -> str:
        return "/v1/completions"

    def payload(self, prompt: BenchPrompt) -> dict[str, Any]:
        return {"model": self.model, "prompt": prompt.prompt, "stream": True,
                **_forced_length(prompt.output_len)}

    def parse(self, data: str) -> Delta:
        if data.strip() == "[DONE]":
            return Delta(done=True)
        obj = json.loads(data)
        if "error" in obj:
            return Delta(error=json.dumps(obj["error"]))
        choices = obj.get("choices") or []
        return Delta(text=self._choice_text(choices[0]) if choices else "")

    def _choice_text(self, choice: dict[str, Any]) -> str:
        return str(choice.get("text") or "")


class OpenAIChatEndpoint(OpenAICompletionsEndpoint):
    """`/v1/chat/completions`; the prompt is one user message."""

    def path(self) -> str:
        return "/v1/chat/completions"

    def payload(self, prompt: BenchPrompt) -> dict[str, Any]:
        return {"model": self.model, "stream": True,
                "messages": [{"role": "user", "content": prompt.prompt}],
                **_forced_length(prompt.output_len)}

    def _choice_text(self, choice: dict[str, Any]) -> str:
        return str((choice.get("delta") or {}).get("content") or "")


def _forced_length(n: int) -> dict[str, Any]:
    return {"max_tokens": n, "min_tokens": n, "ignore_eos": True}


def make_endpoint(kind: str, model: str, extra_body: str = "") -> Endpoint:
    """The endpoint of `kind`; `extra_body`: a JSON object added to every request body."""
    classes: dict[str, type[Endpoint]] = {"triton": TritonEndpoint,
                                          "openai-completions": OpenAICompletionsEndpoint,
                                          "openai-chat": OpenAIChatEndpoint}
    return classes[kind](model, parse_extra_body(extra_body))



async def send_request(client: httpx.AsyncClient, endpoint: Endpoint, prompt: BenchPrompt,
                       index: int, timeout_s: float) -> RequestResult:
    """Send one streaming request and time it; failures are recorded, never raised."""
    result = RequestResult(index=index, input_len=prompt.input_len,
                           expected_output_len=prompt.output_len)
    result.start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await _stream(client, endpoint, prompt, result)
    except (TimeoutError, httpx.TimeoutException) as exc:
        _fail(result, "timeout", f"{type(exc).__name__}: no end of stream within {timeout_s}s")
    except httpx.ConnectError as exc:
        _fail(result, "connect", f"{type(exc).__name__}: {exc}")
    except (httpx.TransportError, httpx.StreamError) as exc:
        _fail(result, "dropped", f"{type(exc).__name__}: {exc}")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        _fail(result, "bad_event", f"{type(exc).__name__}: {exc}")
    result.e2e_s = time.perf_counter() - result.start
    if not result.ok:
        logger.debug("request %d failed: %s %s", index, result.error_kind, result.error)
    return result


async def _stream(client: httpx.AsyncClient, endpoint: Endpoint, prompt: BenchPrompt,
                  result: RequestResult) -> None:
    async with client.stream("POST", endpoint.path(), json=endpoint.body(prompt)) as resp:
        if resp.status_code != 200:
            body = (await resp.aread()).decode("utf-8", "replace")
            _fail(result, f"http_{resp.status_code}", body[:_ERROR_BODY_CHARS])
            return
        parser = SSEParser()
        last = result.start
        async for chunk in resp.aiter_text():
            for data in parser.feed(chunk):
                delta = endpoint.parse(data)
                if delta.error is not None:
                    _fail(result, "error_event", delta.error[:_ERROR_BODY_CHARS])
                    return
                if delta.done:
                    result.ok = True
                    return
                if delta.text:
                    last = _record_text(result, delta.text, last)
        if parser.has_partial_event:
            _fail(result, "dropped", "stream ended inside an event")
        elif endpoint.needs_done:
            _fail(result, "dropped", "stream ended without [DONE]")
        else:
            result.ok = True


def _record_text(result: RequestResult, text: str, last: float) -> float:
    now = time.perf_counter()
    if result.ttft_s is None:
        result.ttft_s = now - result.start
    else:
        result.itl_s.append(now - last)
    result.text += text
    result.chunks.append(text)
    result.num_events += 1
    return now


def _fail(result: RequestResult, kind: str, message: str) -> None:
    result.ok = False
    result.error_kind = kind
    result.error = message
