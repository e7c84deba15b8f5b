"""OpenAPI request-body descriptions for routes that read the raw body themselves.

The routes parse JSON by hand (Triton accepts any Content-Type), so FastAPI cannot derive these;
they document the accepted shapes in /openapi.json (and give fuzzers something to work from).
"""

from __future__ import annotations

from typing import Any

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_WORDS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


TRITON_GENERATE_BODY = _body({
    "type": "object",
    "required": ["text_input", "max_tokens"],
    "properties": {
        "id": {"type": "string"}, "text_input": {"type": "string"}, "max_tokens": _INT,
        "bad_words": _WORDS, "stop_words": _WORDS, "stream": _BOOL,
        "exclude_input_in_output": _BOOL, "end_id": _INT, "pad_id": _INT, "top_k": _INT,
        "top_p": _NUM, "temperature": _NUM, "repetition_penalty": _NUM,
        "presence_penalty": _NUM, "frequency_penalty": _NUM, "min_tokens": _INT,
        "min_length": _INT, "seed": _INT, "random_seed": _INT, "return_log_probs": _BOOL,
        "return_num_input_tokens": _BOOL, "return_num_output_tokens": _BOOL,
        "beam_width": _INT, "num_return_sequences": _INT, "parameters": {"type": "object"},
    },
})

_SAMPLING = {
    "model": {"type": "string"}, "max_tokens": {"type": ["integer", "null"]},
    "max_completion_tokens": {"type": ["integer", "null"]}, "temperature": _NUM, "top_p": _NUM,
    "top_k": _INT, "min_p": _NUM, "n": _INT, "stream": _BOOL, "seed": _INT, "stop": _WORDS,
    "presence_penalty": _NUM, "frequency_penalty": _NUM, "repetition_penalty": _NUM,
    "ignore_eos": _BOOL, "min_tokens": _INT, "include_stop_str_in_output": _BOOL,
    "stream_options": {"type": "object", "properties": {"include_usage": _BOOL}},
}

COMPLETIONS_BODY = _body({
    "type": "object", "required": ["model", "prompt"],
    "properties": dict(_SAMPLING, prompt={"oneOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"type": "integer"}}]}, logprobs={"type": ["integer", "null"]},
        echo=_BOOL),
})

CHAT_BODY = _body({
    "type": "object", "required": ["model", "messages"],
    "properties": dict(_SAMPLING, logprobs=_BOOL, top_logprobs={"type": ["integer", "null"]},
                       messages={"type": "array", "items": {
                           "type": "object", "required": ["role", "content"],
                           "properties": {"role": {"type": "string"},
                                          "content": {"type": "string"}}}}),
})

REPOSITORY_INDEX_BODY = {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"ready": _BOOL}}}}}
