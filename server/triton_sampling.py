"""Map Triton/TensorRT-LLM generate inputs onto scheduler SamplingParams.
(docs/triton-generate.md §2.1)

TensorRT-LLM semantics: top_k=0 and top_p=0 (the defaults) mean greedy, whatever the
temperature; top_p <= 0 is "unset"; min_tokens defaults to 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from scheduler.request import SamplingParams
from server.errors import ValidationError
from server.tokenizer_protocol import TokenizerLike
from server.triton_parse import TritonInputs

logger = logging.getLogger(__name__)

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


def _sampling_knobs(inputs: TritonInputs) -> tuple[float, int, float]:
    top_k = inputs.get("top_k", 0)
    top_p = inputs.get("top_p", 0.0)
    temperature = inputs.get("temperature", 1.0)
    if top_k < 0:
        raise ValidationError(f"input 'top_k' must be >= 0, got {top_k}")
    if top_p > 1.0:
        raise ValidationError(f"input 'top_p' must be in [0, 1], got {top_p}")
    if temperature < 0.0:
        raise ValidationError(f"input 'temperature' must be >= 0, got {temperature}")
    if top_p < 0.0:
        raise ValidationError(f"input 'top_p' must be in [0, 1], got {top_p}")
    if (top_k == 0 and top_p == 0.0) or top_k == 1 or temperature == 0.0:
        return 0.0, 0, 1.0  # greedy
    return temperature, top_k, (top_p if top_p > 0.0 else 1.0)


def triton_to_sampling(inputs: TritonInputs, tokenizer: TokenizerLike) -> tuple[SamplingParams,
                                                                                 TritonOptions]:
    _check_unsupported(inputs)
    max_tokens = inputs.get("max_tokens")
    if max_tokens < 1:
        raise ValidationError(f"input 'max_tokens' must be >= 1, got {max_tokens}")
    temperature, top_k, top_p = _sampling_knobs(inputs)
    min_tokens = inputs.get("min_tokens", 1)
    if min_tokens < 0:
        raise ValidationError(f"input 'min_tokens' must be >= 0, got {min_tokens}")
    end_id = inputs.get("end_id")
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=inputs.get("repetition_penalty", 1.0),
        presence_penalty=inputs.get("presence_penalty", 0.0),
        frequency_penalty=inputs.get("frequency_penalty", 0.0),
        seed=inputs.get("seed"), min_tokens=min_tokens,
        end_ids=(end_id,) if end_id is not None else (),
        pad_id=inputs.get("pad_id"),
        bad_words_ids=_words_to_ids(inputs.get("bad_words", []), tokenizer),
        stop=tuple(w for w in inputs.get("stop_words", []) if w),
        logprobs=bool(inputs.get("return_log_probs", False)),
    )
    options = TritonOptions(
        stream=bool(inputs.get("stream", False)),
        exclude_input_in_output=bool(inputs.get("exclude_input_in_output", False)),
        return_log_probs=bool(inputs.get("return_log_probs", False)),
        return_num_input_tokens=bool(inputs.get("return_num_input_tokens", False)),
        return_num_output_tokens=bool(inputs.get("return_num_output_tokens", False)),
    )
    return params, options
