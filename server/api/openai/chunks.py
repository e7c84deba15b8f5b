"""The objects of OpenAI completion/chat responses, whole and streamed, for one request.

`Job` turns the request's text deltas (server/request/text.py, stop strings cut out or kept as
`include_stop_str_in_output` asks) into choices, usage and envelopes; `Events` is its stream
(server/api/sse.py EventWriter): a chat stream opens with the assistant role, ends with the
usage chunk when `stream_options.include_usage` is set, then `[DONE]`; a failure after the first
output is an error event, then `[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from scheduler.request import FinishReason, RequestOutput, TopLogprobs
from server.api.openai.logprobs import LogprobRenderer
from server.api.openai.schema import _Base
from server.api.sse import DONE, encode_event
from server.errors import ApiError
from server.request.generation import Generation
from server.request.stop_trim import StopMode
from server.request.text import OutputText, TextDelta, text_deltas, whole
from server.serving import ServingModel

_EMPTY = RequestOutput("")  # no tokens: a chunk without log-probs


def _finish_reason(out: RequestOutput) -> str:
    """OpenAI's finish reasons are only "stop" and "length": an aborted or failed request is an
    error object instead (Generation.outputs raises before such a final output)."""
    return "length" if out.finish_reason is FinishReason.LENGTH else "stop"


class Job:
    """One OpenAI request's output: text deltas in, choices and usage out."""

    def __init__(self, model: ServingModel, gen: Generation, req: _Base, kind: str) -> None:
        self.gen, self.req = gen, req
        self.kind = kind  # "text_completion" | "chat.completion"
        self.id = ("cmpl-" if kind == "text_completion" else "chatcmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        mode = StopMode.INCLUDE if req.include_stop_str_in_output else StopMode.EXCLUDE
        self.text = OutputText(model.tokenizer, gen.request, mode)
        self.lp = LogprobRenderer(model.tokenizer) if gen.request.params.logprobs else None
        self.offset = 0  # characters sent before the latest delta's text
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[TopLogprobs] = []
        self.finish: str | None = None

    def deltas(self) -> AsyncGenerator[TextDelta, None]:
        """The request's text deltas, for `Events` (which takes each in)."""
        return text_deltas(self.gen, self.text)

    async def run_whole(self) -> dict[str, Any]:
        """Wait for the whole output; the response of a request that does not stream."""
        self.take(await whole(self.gen, self.text))
        body = self.envelope(self.choice(self.text.text, self.finish, None, 0, chunk=False),
                             chunk=False)
        body["usage"] = self.usage()
        return body

    def take(self, delta: TextDelta) -> None:
        """Take one delta in; an aborted or failed request raises ApiError."""
        self.offset = self.text.length - len(delta.text)
        out = delta.out
        self.tokens.extend(out.new_token_ids)
        self.logprobs.extend(out.new_logprobs or [])
        self.tops.extend(out.new_top_logprobs or [])
        if out.finished:
            self.finish = _finish_reason(out)

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


class Events:
    """The stream of a Job (server/api/sse.py EventWriter)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def head(self) -> list[bytes]:
        job = self.job
        if job.kind != "chat.completion":
            return []
        first = job.choice("", None, _EMPTY, 0, chunk=True)
        first["delta"] = {"role": "assistant", "content": ""}
        return [encode_event(job.envelope(first, chunk=True))]

    def event(self, delta: TextDelta) -> bytes | None:
        out, job = delta.out, self.job
        job.take(delta)
        if not delta.text and not out.finished and not out.new_token_ids:
            return None
        choice = job.choice(delta.text, job.finish, out, job.offset, chunk=True)
        return encode_event(job.envelope(choice, chunk=True))

    def tail(self) -> list[bytes]:
        job = self.job
        if not job.req.include_usage():
            return [DONE]
        usage = job.envelope(job.choice("", None, _EMPTY, 0, True), chunk=True)
        usage["choices"] = []
        usage["usage"] = job.usage()
        return [encode_event(usage), DONE]

    def error(self, err: ApiError) -> list[bytes]:
        return [encode_event({"error": {"message": err.message, "type": "server_error",
                                        "code": err.status}}), DONE]
