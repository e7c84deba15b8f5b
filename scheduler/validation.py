"""Validation of client-supplied generation settings and prompts -> RequestError naming the field.

The one place the bounds and messages of SamplingParams are written: the HTTP routes run
`validate_params` before tokenising the prompt (mapping ParamError.field to their own input
names), and the scheduler runs it again on every request it is given, with `validate_prompt`.

Bounds (documented choices):
- temperature in [0, 2] (OpenAI's range; 0 = greedy), finite
- top_k >= 0 (0 = off); top_p in (0, 1]; min_p in [0, 1]
- repetition_penalty in (0, 100]; presence/frequency penalties in [-2, 2] (OpenAI's range)
- 1 <= max_tokens <= max_context; 0 <= min_tokens <= max_tokens
- seed in [0, 2**64) (Triton's random_seed is uint64)
- token ids of bad_words_ids and the prompt in [0, vocab_size)
- end_ids and pad_id: non-negative int32 (Triton's type); an end id outside the vocabulary is
  never produced, so it means "never stop on an end token" (TensorRT-LLM accepts it too)
- top_logprobs in [0, MAX_TOP_LOGPROBS], and only with logprobs
- stop strings non-empty, at most MAX_STOP_STRINGS
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from scheduler.request import ParamError, RequestError, SamplingParams

MAX_TEMPERATURE = 2.0
MAX_REPETITION_PENALTY = 100.0
MAX_ABS_PRESENCE_FREQUENCY = 2.0
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit
INT32_MAX = 2**31 - 1
SEED_LIMIT = 2**64


def _check_float(field: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ParamError(field, value, "must be a finite number")
    if value > hi or value < lo or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise ParamError(field, value, f"must be in {left}{lo}, {hi}]")


def _check_int(field: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ParamError(field, value, "must be an integer")
    if not lo <= value <= hi:
        raise ParamError(field, value, f"must be in [{lo}, {hi}]")


def check_token_ids(field: str, ids: Iterable[int], vocab_size: int) -> None:
    """Vectorized: integers (not bools/floats) in [0, vocab_size); the error names the first
    offending value."""
    ids = list(ids)
    if not ids:
        return
    try:
        arr = np.asarray(ids)
    except ValueError:
        arr = np.asarray(ids, dtype=object)
    rule = f"token ids must be integers in [0, {vocab_size})"
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool)), ids)
        raise ParamError(field, bad, rule)
    if int(arr.min()) < 0 or int(arr.max()) >= vocab_size:
        raise ParamError(field, next(t for t in ids if not 0 <= t < vocab_size), rule)


def validate_params(params: SamplingParams, max_context: int, vocab_size: int) -> None:
    """Raise ParamError for the first invalid field of params."""
    _check_int("max_tokens", params.max_tokens, 1, max_context)
    _check_int("min_tokens", params.min_tokens, 0, params.max_tokens)
    _check_float("temperature", params.temperature, 0.0, MAX_TEMPERATURE)
    _check_int("top_k", params.top_k, 0, INT32_MAX)
    _check_float("top_p", params.top_p, 0.0, 1.0, lo_open=True)
    _check_float("min_p", params.min_p, 0.0, 1.0)
    _check_float("repetition_penalty", params.repetition_penalty, 0.0, MAX_REPETITION_PENALTY,
                 lo_open=True)
    m = MAX_ABS_PRESENCE_FREQUENCY
    _check_float("presence_penalty", params.presence_penalty, -m, m)
    _check_float("frequency_penalty", params.frequency_penalty, -m, m)
    if params.seed is not None:
        _check_int("seed", params.seed, 0, SEED_LIMIT - 1)
    check_token_ids("end_ids", params.end_ids, INT32_MAX + 1)
    if params.pad_id is not None:
        check_token_ids("pad_id", [params.pad_id], INT32_MAX + 1)
    _check_int("top_logprobs", params.top_logprobs, 0, MAX_TOP_LOGPROBS)
    if params.top_logprobs and not params.logprobs:
        raise ParamError("top_logprobs", params.top_logprobs, "needs logprobs")
    for word in params.bad_words_ids:
        if len(word) == 0:
            raise ParamError("bad_words_ids", word, "each bad word needs at least one token")
        check_token_ids("bad_words_ids", word, vocab_size)
    if len(params.stop) > MAX_STOP_STRINGS:
        raise ParamError("stop", len(params.stop), f"at most {MAX_STOP_STRINGS} stop strings")
    for s in params.stop:
        if not isinstance(s, str) or not s:
            raise ParamError("stop", s, "stop strings must be non-empty strings")


def validate_prompt(prompt: list[int], params: SamplingParams, max_model_len: int,
                    vocab_size: int, kv_capacity_tokens: int) -> None:
    """Raise RequestError if the prompt is empty/out of vocab or the request can never fit."""
    if not prompt:
        raise ParamError("prompt_token_ids", prompt, "prompt must not be empty")
    check_token_ids("prompt_token_ids", prompt, vocab_size)
    total = len(prompt) + params.max_tokens
    if total > max_model_len:
        raise RequestError(
            f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds "
            f"the maximum model length {max_model_len}")
    if total - 1 > kv_capacity_tokens:
        raise RequestError(
            f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) needs {total - 1} "
            f"KV slots but the whole cache holds {kv_capacity_tokens}")
