"""OpenAI-compatible /v1/models, /v1/completions, /v1/chat/completions (streaming and not)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from scheduler.request import ParamError
from scheduler.validation import check_token_ids
from server.api.disconnect import abort_on_disconnect
from server.api.json_body import check_text
from server.api.openai.chunks import Events, Job
from server.api.openai.schema import ChatRequest, CompletionRequest, _Base, message_text
from server.api.openapi_docs import CHAT_BODY, COMPLETIONS_BODY
from server.api.sse import json_response, sse_response
from server.app_state import AppState, get_state
from server.errors import ApiError, UnknownModelError, ValidationError, param_error, to_api_error
from server.models import listed_name, loaded_model, takes_text
from server.request.limits import limits_for
from server.request.prep import parse_openai_request
from server.serving import ServingModel

logger = logging.getLogger(__name__)

router = APIRouter()


def _check_model(state: AppState, name: str) -> str:
    if not takes_text(state, name):
        raise UnknownModelError(f"The model '{name}' does not exist")
    return name


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return json_response({"object": "list", "data": [
        {"id": listed_name(get_state(request)), "object": "model", "created": 0,
         "owned_by": "trtserve"}]})


async def _whole(request: Request, job: Job) -> Response:
    gen = job.gen
    async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
        body = await job.run_whole()
    return json_response(body)


async def _run(request: Request, cls: type[_Base], kind: str,
               to_ids: Callable[[ServingModel, Any], list[int]]) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    limits = limits_for(state.settings, state.lifecycle.model)
    req = await state.prep.parse(parse_openai_request, await request.body(), cls, limits)
    label = _check_model(state, req.model)
    model = loaded_model(state)
    params = req.sampling(model.max_context, model.tokenizer.vocab_size)
    model = state.service.admit(label)
    prompt_ids = await state.prep.in_thread(to_ids, model, req)
    if not prompt_ids:
        raise ValidationError("the prompt is empty")
    try:
        async with state.service.submit(model, prompt_ids, params, label, arrival) as gen:
            logger.info("[%s] %s: %d prompt tokens, max_tokens %d, stream %s", gen.request_id,
                        kind, len(prompt_ids), params.max_tokens, req.stream)
            job = Job(model, gen, req, kind)
            if req.stream:
                return await sse_response(request, gen, job.deltas(), Events(job))
            return await _whole(request, job)
    except Exception as exc:
        raise to_api_error(exc) from None


def _completion_ids(model: ServingModel, req: CompletionRequest) -> list[int]:
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        ids = list(prompt)  # type: ignore[arg-type]
        try:
            check_token_ids("prompt", ids, model.tokenizer.vocab_size)
        except ParamError as exc:
            raise param_error(exc, {}) from None
        return ids
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ValidationError("'prompt': exactly one prompt per request is supported")
        prompt = prompt[0]
    if req.echo or req.suffix:
        raise ValidationError("'echo' and 'suffix' are not supported")
    return model.tokenizer.encode(check_text(str(prompt), "prompt"))


def _chat_ids(model: ServingModel, req: ChatRequest) -> list[int]:
    messages = [{"role": m.role, "content": check_text(message_text(m), "messages")}
                for m in req.messages]
    if not model.tokenizer.chat_template:
        raise ValidationError("this model has no chat template; use /v1/completions")
    try:
        return model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - template errors (raise_exception) are client input
        raise ValidationError(f"'messages': the chat template rejected them: {exc}") from None


@router.post("/v1/completions", openapi_extra={"requestBody": COMPLETIONS_BODY})
async def completions(request: Request) -> Response:
    return await _run(request, CompletionRequest, "text_completion", _completion_ids)


@router.post("/v1/chat/completions", openapi_extra={"requestBody": CHAT_BODY})
async def chat_completions(request: Request) -> Response:
    return await _run(request, ChatRequest, "chat.completion", _chat_ids)
