"""SamplingParams validation: each bad field -> RequestError naming the field and value;
SchedulerConfig validation in __post_init__."""

from __future__ import annotations

import math

import pytest

from scheduler.config import SchedulerConfig
from scheduler.request import ParamError, RequestError, SamplingParams
from scheduler.validation import validate_params


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 0), ("max_tokens", 1000), ("min_tokens", -1), ("min_tokens", 17),
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", math.nan),
    ("temperature", math.inf), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5),
    ("top_p", math.nan), ("min_p", -0.1), ("min_p", 1.1), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("presence_penalty", 3.0), ("frequency_penalty", -2.5),
    ("seed", -1), ("seed", 2**64), ("end_ids", (2**31,)), ("end_ids", (-1,)), ("pad_id", -1),
    ("pad_id", 2**31), ("top_logprobs", 21), ("top_logprobs", -1),
    ("bad_words_ids", ((),)), ("bad_words_ids", ((1, 64),)), ("stop", ("",)),
])
def test_invalid_field_named(field: str, value: object) -> None:
    """The error message names the offending field."""
    params = SamplingParams(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ParamError, match=f"invalid {field}=") as info:
        validate_params(params, max_context=512, vocab_size=64)
    assert info.value.field == field
    assert info.value.message("renamed").startswith("invalid renamed=")


def test_valid_params_pass() -> None:
    """A fully specified, sane request validates."""
    params = SamplingParams(max_tokens=32, temperature=2.0, top_k=5, top_p=0.5, min_p=0.1,
                            repetition_penalty=1.2, presence_penalty=-2.0, frequency_penalty=2.0,
                            seed=2**64 - 1, min_tokens=3, end_ids=(0, 63), bad_words_ids=((1, 2),),
                            stop=("\n",), logprobs=True, top_logprobs=20)
    validate_params(params, max_context=512, vocab_size=64)


def test_end_and_pad_ids_past_the_vocab_are_valid() -> None:
    """Triton clients send end_id >= vocab to mean "never stop on an end token"."""
    validate_params(SamplingParams(end_ids=(64, 2**31 - 1), pad_id=1048576), max_context=512,
                    vocab_size=64)


def test_top_logprobs_needs_logprobs() -> None:
    with pytest.raises(RequestError, match="invalid top_logprobs="):
        validate_params(SamplingParams(top_logprobs=2), max_context=512, vocab_size=64)


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_num_tokens": 0},
                                    {"max_queue_size": -1}, {"policy": "fcfs"},
                                    {"max_model_len": 1}])
def test_config_rejects(kwargs: dict[str, object]) -> None:
    """Bad scheduler settings fail at construction, naming the field."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SchedulerConfig(**kwargs)  # type: ignore[arg-type]
