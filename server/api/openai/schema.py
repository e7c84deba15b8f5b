"""OpenAI request bodies, validated strictly (no "10" -> 10 coercion), mapped to SamplingParams.

Types are checked here; the bounds of the sampling parameters are the scheduler's
(scheduler/validation.py), checked by `sampling()` and reported with the OpenAI parameter's name.
A request naming no sampling parameter is greedy (as on the Triton routes); OpenAI's own default
temperature of 1.0 applies only when top_p/top_k/min_p is given without a temperature.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from scheduler.request import ParamError, SamplingParams
from scheduler.validation import validate_params
from server.errors import ValidationError, param_error

MAX_TOKENS_DEFAULT = 16  # OpenAI's completions default
TOP_K_OFF = -1  # vLLM's "no top-k", as 0


class _Base(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = Field(1, ge=1, le=1)
    best_of: int | None = Field(None, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: int = 0
    include_stop_str_in_output: bool = False  # vLLM's extension: keep the stop string
    user: str | None = None

    def include_usage(self) -> bool:
        opts = self.stream_options or {}
        return bool(opts.get("include_usage", False))

    def sampling(self, max_context: int, vocab_size: int) -> SamplingParams:
        """The request's SamplingParams, checked (a 400 naming the OpenAI parameter)."""
        params = self._params()
        try:
            validate_params(params, max_context, vocab_size)
        except ParamError as exc:
            raise param_error(exc, self.param_names()) from None
        return params

    def _params(self) -> SamplingParams:
        sampling_named = any(v is not None for v in (self.temperature, self.top_p, self.min_p)) \
            or self.top_k not in (None, TOP_K_OFF, 0)
        temperature = self.temperature if self.temperature is not None else (
            1.0 if sampling_named else 0.0)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        logprobs, top_logprobs = self.logprob_counts()
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else MAX_TOKENS_DEFAULT,
            temperature=temperature,
            top_k=0 if self.top_k in (None, TOP_K_OFF) else self.top_k,
            top_p=self.top_p if self.top_p is not None else 1.0,
            min_p=self.min_p if self.min_p is not None else 0.0,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            stop=tuple(s for s in stop if s), logprobs=logprobs, top_logprobs=top_logprobs)

    def param_names(self) -> dict[str, str]:
        """SamplingParams field -> this request's parameter, where the names differ."""
        if self.max_completion_tokens is not None:
            return {"max_tokens": "max_completion_tokens"}
        return {}

    def logprob_counts(self) -> tuple[bool, int]:
        """(log-probs of the chosen tokens?, how many top alternatives per token)."""
        return False, 0


class CompletionRequest(_Base):
    prompt: str | list[str] | list[int]
    logprobs: int | None = None  # k: the chosen token's log-prob and the k most likely
    echo: bool = False
    suffix: str | None = None

    def logprob_counts(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def param_names(self) -> dict[str, str]:
        return {**super().param_names(), "top_logprobs": "logprobs"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Base):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None

    def logprob_counts(self) -> tuple[bool, int]:
        return self.logprobs, self.top_logprobs or 0


def _describe(exc: PydanticError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"'{loc}': {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def validate_body(cls: type[_Base], body: dict[str, Any]) -> Any:
    """The typed request; a 400 naming the first parameter at fault (also in `param`)."""
    try:
        return cls.model_validate(body)
    except PydanticError as exc:
        loc = exc.errors(include_input=False, include_url=False)[0]["loc"]
        raise ValidationError(_describe(exc), param=str(loc[0]) if loc else None) from None


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
