"""OpenAI-compatible /v1/models, /v1/completions, /v1/chat/completions (streaming and not)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from scheduler.request import FinishReason, ParamError, RequestOutput, TopLogprobs
from scheduler.validation import check_token_ids
from server.app_state import AppState, get_state
from server.request.detokenizer import IncrementalDetokenizer
from server.api.disconnect import HeldStreamingResponse, abort_on_disconnect
from server.errors import ApiError, UnknownModelError, ValidationError, param_error, to_api_error
from server.request.generation import Generation
from server.api.json_body import check_text
from server.api.openai.logprobs import LogprobRenderer
from server.api.openai.schema import ChatRequest, CompletionRequest, _Base, message_text
from server.api.openapi_docs import CHAT_BODY, COMPLETIONS_BODY
from server.request.limits import limits_for
from server.request.prep import parse_openai_request
from server.models import served_names
from server.serving import ServingModel
from server.request.stop_trim import StopTrimmer
from server.api.sse import encode_event
from server.api.triton.schema import TEXT_MODELS

logger = logging.getLogger(__name__)

router = APIRouter()
_EMPTY = RequestOutput("")  # no tokens: a chunk without log-probs


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _served(state: AppState) -> str:
    return served_names(state)[0]


def _check_model(state: AppState, name: str) -> str:
    if name not in served_names(state) and name not in TEXT_MODELS:
        raise UnknownModelError(f"The model '{name}' does not exist")
    return name


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    name = _served(get_state(request))
    return Response(_dumps({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "trtserve"}]}),
        media_type="application/json")


class _Job:
    """Shared plumbing of both OpenAI routes: prompt ids in, text deltas and usage out."""

    def __init__(self, model: ServingModel, gen: Generation, req: _Base, kind: str) -> None:
        self.model, self.gen, self.req = model, gen, req
        self.kind = kind  # "text_completion" | "chat.completion"
        self.id = ("cmpl-" if kind == "text_completion" else "chatcmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.detok = IncrementalDetokenizer(model.tokenizer, gen.request.prompt_token_ids)
        params = gen.request.params
        self.trim = StopTrimmer(params.stop, req.include_stop_str_in_output) \
            if params.stop else None
        self.lp = LogprobRenderer(model.tokenizer) if params.logprobs else None
        self.text = ""  # everything sent (stop strings trimmed)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[TopLogprobs] = []
        self.finish: str | None = None

    def feed(self, out: RequestOutput) -> str:
        """The text to send for one delta."""
        self.tokens.extend(out.new_token_ids)
        self.logprobs.extend(out.new_logprobs or [])
        self.tops.extend(out.new_top_logprobs or [])
        text = self.detok.step(out.new_token_ids)
        if out.finished:
            text += self.detok.finish()
        if self.trim is not None:
            text = self.trim.feed(text, final=out.finished)
        if out.finished:
            self.finish = _finish_reason(out, self.trim)
        self.text += text
        return text

    def usage(self) -> dict[str, int]:
        p, c = self.gen.num_prompt_tokens, len(self.tokens)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def logprobs_obj(self, ids: list[int], lps: list[float], tops: list[TopLogprobs],
                     offset: int) -> Any:
        if self.lp is None:
            return None
        if self.kind == "chat.completion":
            return self.lp.chat(ids, lps, tops)
        return self.lp.completion(ids, lps, tops, offset)

    def choice(self, text: str, finish: str | None, out: RequestOutput | None,
               offset: int, chunk: bool) -> dict[str, Any]:
        ids, lps, tops = (self.tokens, self.logprobs, self.tops) if out is None else (
            out.new_token_ids, out.new_logprobs or [], out.new_top_logprobs or [])
        c: dict[str, Any] = {"index": 0, "logprobs": self.logprobs_obj(ids, lps, tops, offset),
                             "finish_reason": finish}
        if self.kind == "text_completion":
            c["text"] = text
        elif chunk:
            c["delta"] = {"content": text} if text or finish is None else {}
        else:
            c["message"] = {"role": "assistant", "content": text}
        return c

    def envelope(self, choice: dict[str, Any], chunk: bool) -> dict[str, Any]:
        obj = self.kind + (".chunk" if chunk and self.kind == "chat.completion" else "")
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.req.model, "choices": [choice]}


def _finish_reason(out: RequestOutput, trim: StopTrimmer | None) -> str:
    """OpenAI's finish reasons are only "stop" and "length": an aborted or failed request is an
    error object instead (Generation.outputs raises before such a final output)."""
    if trim is not None and trim.hit:
        return "stop"
    return "length" if out.finish_reason is FinishReason.LENGTH else "stop"


async def _whole(request: Request, job: _Job) -> Response:
    gen = job.gen
    async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
        async for out in gen.outputs():
            job.feed(out)
    body = job.envelope(job.choice(job.text, job.finish, None, 0, chunk=False), chunk=False)
    body["usage"] = job.usage()
    return Response(_dumps(body), media_type="application/json")


def _sse(obj: Any) -> bytes:
    return encode_event(obj)


async def _stream(request: Request, job: _Job) -> AsyncIterator[bytes]:
    gen = job.gen
    outputs = gen.outputs()
    try:
        async with abort_on_disconnect(request, gen.disconnected, gen.request_id):
            if job.kind == "chat.completion":
                first = job.choice("", None, _EMPTY, 0, chunk=True)
                first["delta"] = {"role": "assistant", "content": ""}
                yield _sse(job.envelope(first, chunk=True))
            try:
                async for out in outputs:
                    offset = len(job.text)
                    text = job.feed(out)
                    if not text and not out.finished and not out.new_token_ids:
                        continue
                    choice = job.choice(text, job.finish, out, offset, chunk=True)
                    yield _sse(job.envelope(choice, chunk=True))
                if job.req.include_usage():
                    tail = job.envelope(job.choice("", None, _EMPTY, 0, True), chunk=True)
                    tail["choices"] = []
                    tail["usage"] = job.usage()
                    yield _sse(tail)
            except ApiError as err:
                yield _sse({"error": {"message": err.message, "type": "server_error",
                                      "code": err.status}})
            yield b"data: [DONE]\n\n"
    finally:
        await outputs.aclose()


async def _run(request: Request, cls: type[_Base], kind: str,
               to_ids: Callable[[ServingModel, Any], list[int]]) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    limits = limits_for(state.settings, state.lifecycle.model)
    req = await state.prep.parse(parse_openai_request, await request.body(), cls, limits)
    label = _check_model(state, req.model)
    model = state.service.admit(label)
    params = req.sampling(model.max_context, model.tokenizer.vocab_size)
    prompt_ids = await state.prep.in_thread(to_ids, model, req)
    if not prompt_ids:
        raise ValidationError("the prompt is empty")
    try:
        async with state.service.submit(model, prompt_ids, params, label, arrival) as gen:
            logger.info("[%s] %s: %d prompt tokens, max_tokens %d, stream %s", gen.request_id,
                        kind, len(prompt_ids), params.max_tokens, req.stream)
            job = _Job(model, gen, req, kind)
            if req.stream:
                return HeldStreamingResponse(gen.hand_on(), _stream(request, job),
                                             media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache"})
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
