"""Map Triton/TensorRT-LLM generate inputs onto scheduler SamplingParams.
(docs/triton-generate.md §2.1)

TensorRT-LLM semantics: top_k=0 and top_p=0 (the defaults) mean greedy, whatever the
temperature; top_p = 0 is "unset"; min_tokens defaults to 1. The bounds are the scheduler's
(scheduler/validation.py), checked here before admission (a bad value is a 400 however busy the
server is); the bad words are tokenised after admission, with the prompt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scheduler.request import ParamError, SamplingParams
from scheduler.validation import validate_params
from server.errors import ValidationError, param_error
from server.tokenizer_protocol import TokenizerLike
from server.api.triton.parse import TritonInputs

# SamplingParams field -> the Triton input it comes from (the others have the same name)
TRITON_NAMES = {"end_ids": "end_id", "bad_words_ids": "bad_words", "stop": "stop_words",
                "logprobs": "return_log_probs"}
# inputs accepted for compatibility but refused when they ask for something we do not do
_UNSUPPORTED_TRUE = ("return_context_logits", "return_generation_logits", "return_perf_metrics")
_UNSUPPORTED_ANY = ("decoder_text_input", "prompt_embedding_table", "prompt_table_extra_id",
                    "prompt_vocab_size", "lora_task_id", "guided_decoding_guide_type",
                    "guided_decoding_guide")


@dataclass(frozen=True, slots=True)
class TritonOptions:
    """Per-request output options that are not sampling parameters."""

    stream: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool


def _check_unsupported(inputs: TritonInputs) -> None:
    for name in _UNSUPPORTED_TRUE:
        if inputs.get(name, False):
            raise ValidationError(f"input '{name}'=true is not supported by this server")
    for name in _UNSUPPORTED_ANY:
        if name in inputs.values:
            raise ValidationError(f"input '{name}' is not supported by this server")
    if inputs.get("beam_width", 1) != 1:
        raise ValidationError("input 'beam_width' must be 1: beam search is not supported")
    if inputs.get("num_return_sequences", 1) != 1:
        raise ValidationError("input 'num_return_sequences' must be 1 on this server")
    words = inputs.get("embedding_bias_words", [])
    if any(words) or inputs.get("embedding_bias_weights"):
        raise ValidationError("input 'embedding_bias_words' is not supported by this server")


def _words_to_ids(words: list[str], tokenizer: TokenizerLike) -> tuple[tuple[int, ...], ...]:
    """Each bad word as tokenized alone AND after a space (mid-sentence form), deduplicated.

    TensorRT-LLM only bans the standalone form, which misses " word" in running text.
    """
    out: dict[tuple[int, ...], None] = {}
    for word in words:
        if not word:
            continue
        forms = (word,) if word[0].isspace() else (word, " " + word)
        for form in forms:
            ids = tokenizer.encode(form, parse_special=False, add_special_tokens=False)
            if ids:
                out[tuple(ids)] = None
    return tuple(out)


def _is_greedy(top_k: int, top_p: float, temperature: float) -> bool:
    """TensorRT-LLM: top_k=0 with top_p=0 (both unset), top_k=1 or temperature=0."""
    return (top_k == 0 and top_p == 0.0) or top_k == 1 or temperature == 0.0


def _params(inputs: TritonInputs) -> SamplingParams:
    """The inputs under the scheduler's names, as given (top_p=0, "unset", is 1)."""
    end_id = inputs.get("end_id")
    top_p = inputs.get("top_p", 0.0)
    return SamplingParams(
        max_tokens=inputs.get("max_tokens"), temperature=inputs.get("temperature", 1.0),
        top_k=inputs.get("top_k", 0), top_p=top_p if top_p != 0.0 else 1.0,
        repetition_penalty=inputs.get("repetition_penalty", 1.0),
        presence_penalty=inputs.get("presence_penalty", 0.0),
        frequency_penalty=inputs.get("frequency_penalty", 0.0),
        seed=inputs.get("seed"), min_tokens=inputs.get("min_tokens", 1),
        end_ids=(end_id,) if end_id is not None else (),
        pad_id=inputs.get("pad_id"),
        stop=tuple(w for w in inputs.get("stop_words", []) if w),
        logprobs=bool(inputs.get("return_log_probs", False)),
    )


def triton_to_sampling(inputs: TritonInputs, max_context: int, vocab_size: int
                       ) -> tuple[SamplingParams, TritonOptions]:
    """Checked SamplingParams (the scheduler's bounds, said with the Triton input names; no
    bad words yet: `with_bad_words`) and the output options; a greedy request (see
    `_is_greedy`) drops its sampling knobs."""
    _check_unsupported(inputs)
    params = _params(inputs)
    try:
        validate_params(params, max_context, vocab_size)
    except ParamError as exc:
        raise param_error(exc, TRITON_NAMES) from None
    if _is_greedy(inputs.get("top_k", 0), inputs.get("top_p", 0.0), params.temperature):
        params = dataclasses.replace(params, temperature=0.0, top_k=0, top_p=1.0)
    options = TritonOptions(
        stream=bool(inputs.get("stream", False)),
        exclude_input_in_output=bool(inputs.get("exclude_input_in_output", False)),
        return_log_probs=bool(inputs.get("return_log_probs", False)),
        return_num_input_tokens=bool(inputs.get("return_num_input_tokens", False)),
        return_num_output_tokens=bool(inputs.get("return_num_output_tokens", False)),
    )
    return params, options


def with_bad_words(params: SamplingParams, inputs: TritonInputs, tokenizer: TokenizerLike
                   ) -> SamplingParams:
    """params with the `bad_words` input tokenised (token ids of our own tokenizer: in bounds)."""
    words = _words_to_ids(inputs.get("bad_words", []), tokenizer)
    return dataclasses.replace(params, bad_words_ids=words) if words else params
