"""Triton generate / generate_stream (docs/triton-generate.md §1) for `ensemble`,
`tensorrt_llm_bls` and the served model's own name, with and without `/versions/{v}`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from scheduler.request import RequestOutput, SamplingParams
from server.app_state import AppState, get_state
from server.request.detokenizer import IncrementalDetokenizer
from server.api.disconnect import HeldStreamingResponse, abort_on_disconnect
from server.errors import ApiError, UnknownModelError, ValidationError, to_api_error
from server.request.generation import Generation
from server.api.json_body import dumps_compact
from server.api.openapi_docs import TRITON_GENERATE_BODY
from server.request.limits import limits_for
from server.request.prep import parse_triton_request
from server.models import served_names
from server.serving import ServingModel
from server.api.triton.parse import TritonInputs
from server.api.sse import encode_event
from server.api.triton.sampling import TritonOptions, triton_to_sampling
from server.api.triton.schema import ALL_TRITON_MODELS, MODEL_VERSION, TEXT_MODELS

logger = logging.getLogger(__name__)

router = APIRouter()
SSE_MEDIA = "text/event-stream; charset=utf-8"


def resolve_model(state: AppState, name: str, version: str | None) -> str:
    """404 for unknown models/versions (Triton's texts); the name is the metrics label."""
    if name not in ALL_TRITON_MODELS and name not in served_names(state):
        raise UnknownModelError(f"Request for unknown model: '{name}' is not found")
    if version is not None and version != MODEL_VERSION:
        raise UnknownModelError(
            f"Request for unknown model: '{name}' version {version} is not found")
    return name


def _text_model(state: AppState, name: str, version: str | None) -> str:
    label = resolve_model(state, name, version)
    if label not in TEXT_MODELS and label not in served_names(state):
        raise ValidationError(f"model '{label}' does not take the generate text inputs; "
                              "use 'ensemble' or 'tensorrt_llm_bls'")
    return label


def _base(label: str, request_id: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": label, "model_version": MODEL_VERSION,
                           "sequence_end": False, "sequence_id": 0, "sequence_start": False}
    if request_id is not None:
        out["id"] = request_id
    return out


def _scalar_or_list(values: list[float]) -> float | list[float]:
    return values[0] if len(values) == 1 else values


def _extras(opts: TritonOptions, gen: Generation, logprobs: list[float] | None,
            cum: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if opts.return_log_probs:
        out["output_log_probs"] = _scalar_or_list(logprobs or [])
        out["cum_log_probs"] = cum if cum is not None else 0.0
    if opts.return_num_input_tokens:
        out["num_input_tokens"] = gen.num_prompt_tokens
    if opts.return_num_output_tokens:
        out["num_output_tokens"] = gen.num_output_tokens
    return out


async def _collect(gen: Generation) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    logprobs: list[float] = []
    async for out in gen.outputs():
        ids.extend(out.new_token_ids)
        logprobs.extend(out.new_logprobs or [])
    return ids, logprobs


def _full_text(model: ServingModel, gen: Generation, opts: TritonOptions, ids: list[int]) -> str:
    prompt = gen.request.prompt_token_ids
    if opts.exclude_input_in_output:
        detok = IncrementalDetokenizer(model.tokenizer, prompt)
        return detok.step(ids) + detok.finish()
    return model.tokenizer.decode(list(prompt) + ids, skip_special_tokens=True)


async def _whole(request: Request, model: ServingModel, gen: Generation, opts: TritonOptions,
                 base: dict[str, Any]) -> dict[str, Any]:
    async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
        ids, logprobs = await _collect(gen)
    body = dict(base, text_output=_full_text(model, gen, opts, ids))
    body.update(_extras(opts, gen, logprobs, sum(logprobs) if logprobs else None))
    return body


def load_report(request: Request, model: ServingModel) -> dict[str, str]:
    """ORCA-style `endpoint-load-metrics` header when asked for (docs/triton-generate.md §1.7)."""
    fmt = request.headers.get("endpoint-load-metrics-format", "").lower()
    if fmt not in ("text", "json"):
        return {}
    s = model.loop.stats()
    util = s.blocks_used / s.blocks_total if s.blocks_total else 0.0
    capacity = s.blocks_total * s.tokens_per_block
    if fmt == "text":
        value = (f"TEXT named_metrics.kv_cache_utilization={util:.6f}, "
                 f"named_metrics.max_token_capacity={capacity}")
    else:
        value = "JSON " + json.dumps({"named_metrics": {"kv_cache_utilization": util,
                                                        "max_token_capacity": capacity}})
    return {"endpoint-load-metrics": value}


def _event(payload: dict[str, Any]) -> bytes:
    return encode_event(payload, sort_keys=True)


class _StreamState:
    def __init__(self, model: ServingModel, gen: Generation, opts: TritonOptions,
                 base: dict[str, Any]) -> None:
        self.detok = IncrementalDetokenizer(model.tokenizer, gen.request.prompt_token_ids)
        self.gen, self.opts, self.base = gen, opts, base
        self.cum = 0.0
        self.sent = 0

    def render(self, out: RequestOutput) -> bytes | None:
        text = self.detok.step(out.new_token_ids)
        if out.finished:
            text += self.detok.finish()
        lp = list(out.new_logprobs or [])
        self.cum += sum(lp)
        if not text and not out.new_token_ids and not (out.finished and self.sent == 0):
            return None
        if not text and not self.opts.return_log_probs and not out.finished:
            return None
        self.sent += 1
        payload = dict(self.base, text_output=text)
        payload.update(_extras(self.opts, self.gen, lp, self.cum))
        return _event(payload)


async def _sse(request: Request, state: _StreamState, first: RequestOutput,
               outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[bytes]:
    gen = state.gen
    try:
        async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
            chunk = state.render(first)
            if chunk:
                yield chunk
            if first.finished:
                return
            try:
                async for out in outputs:
                    chunk = state.render(out)
                    if chunk:
                        yield chunk
            except ApiError as err:
                logger.info("[%s] error mid-stream: %s", gen.request_id, err.message)
                yield _event({"error": err.message})
    finally:
        await outputs.aclose()


async def _stream_response(request: Request, model: ServingModel, gen: Generation,
                           opts: TritonOptions, base: dict[str, Any]) -> Response:
    """Status comes from the first result: errors before it are plain JSON. The response
    holds the request on until its last event."""
    outputs = gen.outputs()
    async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
        first = await anext(outputs)
    state = _StreamState(model, gen, opts, base)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
               **load_report(request, model)}
    return HeldStreamingResponse(gen.hand_on(), _sse(request, state, first, outputs),
                                 media_type=SSE_MEDIA, headers=headers)


def _tokenize(inputs: TritonInputs, model: ServingModel
              ) -> tuple[SamplingParams, TritonOptions, list[int]]:
    """Sampling parameters (bad_words are tokenised) and prompt ids; runs on a prep thread."""
    params, opts = triton_to_sampling(inputs, model.tokenizer, model.max_context)
    prompt_ids = model.tokenizer.encode(inputs.get("text_input"))
    if not prompt_ids:
        raise ValidationError("input 'text_input' tokenizes to no tokens")
    return params, opts, prompt_ids


async def _generate(request: Request, name: str, version: str | None, stream_route: bool
                    ) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    label = _text_model(state, name, version)
    limits = limits_for(state.settings, state.lifecycle.model)
    inputs = await state.prep.parse(parse_triton_request, await request.body(), limits)
    model = state.service.admit(label)
    params, opts, prompt_ids = await state.prep.in_thread(_tokenize, inputs, model)
    base = _base(label, inputs.request_id)
    try:
        async with state.service.submit(model, prompt_ids, params, label, arrival) as gen:
            logger.info("[%s] %s %s: %d prompt tokens, max_tokens %d, stream %s",
                        gen.request_id, label, "generate_stream" if stream_route else "generate",
                        len(prompt_ids), params.max_tokens, opts.stream)
            if stream_route and opts.stream:
                return await _stream_response(request, model, gen, opts, base)
            body = await _whole(request, model, gen, opts, base)
    except Exception as exc:
        raise to_api_error(exc) from None
    headers = load_report(request, model)
    if stream_route:
        return Response(_event(body), media_type=SSE_MEDIA, headers=headers)
    return Response(dumps_compact(body), media_type="application/json", headers=headers)


_DOC = {"requestBody": TRITON_GENERATE_BODY}


@router.post("/v2/models/{model_name}/generate", openapi_extra=_DOC)
async def generate(request: Request, model_name: str) -> Response:
    return await _generate(request, model_name, None, False)


@router.post("/v2/models/{model_name}/versions/{version}/generate", openapi_extra=_DOC)
async def generate_version(request: Request, model_name: str, version: str) -> Response:
    return await _generate(request, model_name, version, False)


@router.post("/v2/models/{model_name}/generate_stream", openapi_extra=_DOC)
async def generate_stream(request: Request, model_name: str) -> Response:
    return await _generate(request, model_name, None, True)


@router.post("/v2/models/{model_name}/versions/{version}/generate_stream", openapi_extra=_DOC)
async def generate_stream_version(request: Request, model_name: str, version: str) -> Response:
    return await _generate(request, model_name, version, True)
