"""What crosses the server -> scheduler boundary: a request in, a stream of deltas out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.StrEnum):
    LENGTH = "length"  # max_tokens reached, or the model's context is full
    STOP = "stop"  # a stop string matched (the server matches them on the output text)
    END_ID = "end_id"  # the end-of-sequence token (end_id / model eos) was produced
    ABORT = "abort"  # client went away, shutdown, or explicit abort
    ERROR = "error"  # the engine failed while this request was in flight (see ErrorKind)


class ErrorKind(enum.StrEnum):
    """Why a request finished with ERROR (RequestOutput.error_type); the server maps each
    kind to its HTTP answer in one table (server/request/outcome.py)."""

    QUEUE_TIMEOUT = "queue_timeout"  # waited in the queue past its deadline
    QUEUE_FULL = "queue_full"  # refused at add: the queue is at max_queue_size
    INVALID = "invalid"  # refused at add: a client error (RequestError)
    ENGINE_DEAD = "engine_dead"  # refused at add: the engine has died or is stopping
    STEP_REFUSED = "step_refused"  # the executor refused the step this request was in
    ENGINE = "engine"  # the engine failed while this request was in flight


class RequestError(ValueError):
    """Client-caused: invalid parameters, prompt too long, can never fit. Maps to HTTP 400."""


class ParamError(RequestError):
    """One generation setting outside its bounds (scheduler/validation.py). It names the
    SamplingParams field, so that a route can say the same thing with its own input's name."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field, self.value, self.rule = field, value, rule
        super().__init__(self.message())

    def message(self, name: str | None = None) -> str:
        """`invalid <name>=<value>: <rule>`, the field's own name unless another is given."""
        return f"invalid {name or self.field}={self.value!r}: {self.rule}"


class QueueFullError(RuntimeError):
    """The waiting queue is at max_queue_size. Maps to HTTP 503 + Retry-After."""


class EngineDeadError(RuntimeError):
    """The engine loop has died; no request can be served. Maps to HTTP 503 (health: not ready)."""


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of failure an exception raised by `EngineLoop.add` (or the executor) is."""
    if isinstance(exc, RequestError):
        return ErrorKind.INVALID
    if isinstance(exc, QueueFullError):
        return ErrorKind.QUEUE_FULL
    if isinstance(exc, EngineDeadError):
        return ErrorKind.ENGINE_DEAD
    return ErrorKind.ENGINE


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request generation settings. `temperature == 0` means greedy.

    Defaults are "off": greedy, no filtering, no penalties. The server maps Triton / OpenAI
    conventions onto these (e.g. TensorRT-LLM's top_k=0 and top_p=0 both unset -> greedy).
    Bounds and messages: scheduler/validation.py `validate_params`, the only place they are
    written (the routes translate their inputs' names, the scheduler checks every request).
    """

    max_tokens: int = 16  # new tokens to generate at most (>= 1)
    temperature: float = 0.0  # 0 -> greedy; else the softmax temperature
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0  # 1 -> off; must be in (0, 1]
    min_p: float = 0.0  # 0 -> off; in [0, 1]
    repetition_penalty: float = 1.0  # 1 -> off; > 0 (HF semantics, over prompt + output)
    presence_penalty: float = 0.0  # OpenAI semantics, over output tokens
    frequency_penalty: float = 0.0  # OpenAI semantics, over output tokens
    seed: int | None = None  # per-request RNG seed; same seed -> same tokens, any batch
    min_tokens: int = 0  # suppress end ids until this many tokens were produced
    end_ids: tuple[int, ...] = ()  # tokens that finish with END_ID; empty -> model's eos ids
    ignore_eos: bool = False  # never finish on end ids (benchmarks)
    pad_id: int | None = None  # Triton's pad_id; accepted and reported, never sampled specially
    bad_words_ids: tuple[tuple[int, ...], ...] = ()  # token sequences that must never be produced
    stop: tuple[str, ...] = ()  # stop strings: validated here, matched by the server on the
    # output text (server/request/text.py), which then finishes the request
    logprobs: bool = False  # report the log-prob of each chosen token
    top_logprobs: int = 0  # with logprobs: also the k most likely tokens of each position


@dataclass(slots=True)
class Request:
    """A tokenized generation request handed to the scheduler."""

    request_id: str  # unique among live requests
    prompt_token_ids: list[int]  # non-empty
    params: SamplingParams
    arrival_time: float  # time.monotonic() when the server received it
    queue_deadline: float | None = None  # monotonic time after which a still-waiting request
    # is refused with QueueTimeoutError; None -> no limit
    cache_salt: str = ""  # prefix-cache namespace (e.g. model/adapter id); equal salts share KV


TopLogprobs = tuple[tuple[int, float], ...]  # (token id, raw log-prob), most likely first


@dataclass(slots=True)
class RequestOutput:
    """One delta of a request's progress, pushed after every step that touched it."""

    request_id: str
    new_token_ids: list[int] = field(default_factory=list)  # tokens produced since last delta
    new_logprobs: list[float] | None = None  # their log-probs, when params.logprobs
    finished: bool = False
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # total produced so far
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None  # set with finish_reason ERROR
    error_type: ErrorKind | None = None  # with error: what kind of failure it was
    new_top_logprobs: list[TopLogprobs] | None = None  # per new token, when params.top_logprobs
