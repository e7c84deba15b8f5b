"""Triton generate / generate_stream (docs/triton-generate.md §1) for `ensemble`,
`tensorrt_llm_bls` and the served model's own name, with and without `/versions/{v}`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from scheduler.request import SamplingParams
from server.api.disconnect import abort_on_disconnect
from server.api.openapi_docs import TRITON_GENERATE_BODY
from server.api.sse import SSE_MEDIA, encode_event, json_response, sse_response
from server.api.triton.parse import TritonInputs
from server.api.triton.sampling import TritonOptions, triton_to_sampling, with_bad_words
from server.api.triton.schema import MODEL_VERSION
from server.app_state import AppState, get_state
from server.errors import ApiError, UnknownModelError, ValidationError, to_api_error
from server.models import loaded_model, takes_text, triton_names
from server.request.generation import Generation
from server.request.limits import limits_for
from server.request.prep import parse_triton_request
from server.request.stop_trim import StopMode
from server.request.text import OutputText, TextDelta, text_deltas, whole
from server.serving import ServingModel

logger = logging.getLogger(__name__)

router = APIRouter()


def resolve_model(state: AppState, name: str, version: str | None) -> str:
    """404 for unknown models/versions (Triton's texts); the name is the metrics label."""
    if name not in triton_names(state):
        raise UnknownModelError(f"Request for unknown model: '{name}' is not found")
    if version is not None and version != MODEL_VERSION:
        raise UnknownModelError(
            f"Request for unknown model: '{name}' version {version} is not found")
    return name


def _text_model(state: AppState, name: str, version: str | None) -> str:
    label = resolve_model(state, name, version)
    if not takes_text(state, label):
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


def _text(model: ServingModel, gen: Generation) -> OutputText:
    """The request's text: a stop word ends it after its token, as in TensorRT-LLM."""
    return OutputText(model.tokenizer, gen.request, StopMode.TOKEN)


async def _whole(request: Request, model: ServingModel, gen: Generation, opts: TritonOptions,
                 base: dict[str, Any]) -> dict[str, Any]:
    async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
        delta = await whole(gen, _text(model, gen))
    ids, logprobs, text = delta.out.new_token_ids, delta.out.new_logprobs or [], delta.text
    if not opts.exclude_input_in_output:
        text = model.tokenizer.decode([*gen.request.prompt_token_ids, *ids],
                                      skip_special_tokens=True)
    body = dict(base, text_output=text)
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


class _Events:
    """generate_stream's events (server/api/sse.py EventWriter): one per delta with text (or
    log-probs), the first even when empty; a failure is `{"error": ...}`."""

    def __init__(self, gen: Generation, opts: TritonOptions, base: dict[str, Any]) -> None:
        self.gen, self.opts, self.base = gen, opts, base
        self.cum = 0.0
        self.sent = 0

    def head(self) -> list[bytes]:
        return []

    def event(self, delta: TextDelta) -> bytes | None:
        out, text = delta.out, delta.text
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

    def tail(self) -> list[bytes]:
        return []

    def error(self, err: ApiError) -> list[bytes]:
        return [_event({"error": err.message})]


def _tokenize(inputs: TritonInputs, params: SamplingParams, model: ServingModel
              ) -> tuple[SamplingParams, list[int]]:
    """The prompt's ids and params with the bad words tokenised; runs on a prep thread."""
    prompt_ids = model.tokenizer.encode(inputs.get("text_input"))
    if not prompt_ids:
        raise ValidationError("input 'text_input' tokenizes to no tokens")
    return with_bad_words(params, inputs, model.tokenizer), prompt_ids


async def _answer(request: Request, model: ServingModel, gen: Generation, opts: TritonOptions,
                  base: dict[str, Any], stream_route: bool) -> Response:
    headers = load_report(request, model)
    if stream_route and opts.stream:
        return await sse_response(request, gen, text_deltas(gen, _text(model, gen)),
                                  _Events(gen, opts, base), headers)
    body = await _whole(request, model, gen, opts, base)
    if stream_route:
        return Response(_event(body), media_type=SSE_MEDIA, headers=headers)
    return json_response(body, sort_keys=True, headers=headers)


async def _generate(request: Request, name: str, version: str | None, stream_route: bool
                    ) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    label = _text_model(state, name, version)
    limits = limits_for(state.settings, state.lifecycle.model)
    inputs = await state.prep.parse(parse_triton_request, await request.body(), limits)
    model = loaded_model(state)
    params, opts = triton_to_sampling(inputs, model.max_context, model.tokenizer.vocab_size)
    model = state.service.admit(label)
    params, prompt_ids = await state.prep.in_thread(_tokenize, inputs, params, model)
    base = _base(label, inputs.request_id)
    try:
        async with state.service.submit(model, prompt_ids, params, label, arrival) as gen:
            logger.info("[%s] %s %s: %d prompt tokens, max_tokens %d, stream %s",
                        gen.request_id, label, "generate_stream" if stream_route else "generate",
                        len(prompt_ids), params.max_tokens, opts.stream)
            return await _answer(request, model, gen, opts, base, stream_route)
    except Exception as exc:
        raise to_api_error(exc) from None


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
