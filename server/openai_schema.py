"""OpenAI request bodies, validated strictly (no "10" -> 10 coercion), mapped to SamplingParams.

A request naming no sampling parameter is greedy (as on the Triton routes); OpenAI's own default
temperature of 1.0 applies only when top_p/top_k/min_p is given without a temperature.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticError

from scheduler.request import SamplingParams
from scheduler.validation import MAX_TOP_LOGPROBS
from server.errors import ValidationError

logger = logging.getLogger(__name__)

MAX_TOKENS_DEFAULT = 16  # OpenAI's completions default
MAX_STOP = 16
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions `logprobs`


class _Base(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    best_of: int | None = Field(None, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    include_stop_str_in_output: bool = False  # vLLM's extension: keep the stop string
    user: str | None = None

    @field_validator("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return value

    def include_usage(self) -> bool:
        opts = self.stream_options or {}
        return bool(opts.get("include_usage", False))

    def sampling(self) -> SamplingParams:
        sampling_named = any(v is not None for v in (self.temperature, self.top_p, self.min_p)) \
            or self.top_k not in (None, -1, 0)
        temperature = self.temperature if self.temperature is not None else (
            1.0 if sampling_named else 0.0)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        logprobs, top_logprobs = self.logprob_counts()
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or MAX_TOKENS_DEFAULT,
            temperature=temperature, top_k=max(self.top_k or 0, 0), top_p=self.top_p or 1.0,
            min_p=self.min_p or 0.0, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            stop=tuple(s for s in stop if s), logprobs=logprobs, top_logprobs=top_logprobs)

    def logprob_counts(self) -> tuple[bool, int]:
        """(log-probs of the chosen tokens?, how many top alternatives per token)."""
        return False, 0


class CompletionRequest(_Base):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    def logprob_counts(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Base):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def logprob_counts(self) -> tuple[bool, int]:
        if self.top_logprobs and not self.logprobs:
            raise ValidationError("'top_logprobs' needs 'logprobs': true")
        return self.logprobs, self.top_logprobs or 0


def _describe(exc: PydanticError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"'{loc}': {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def validate_body(cls: type[_Base], body: dict[str, Any]) -> Any:
    try:
        return cls.model_validate(body)
    except PydanticError as exc:
        raise ValidationError(_describe(exc)) from None


def message_text(msg: ChatMessage) -> str:
    """Text of a message; content parts must all be {"type": "text"}."""
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for part in msg.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValidationError("'messages': only text content parts are supported")
        texts.append(part["text"])
    return "".join(texts)
