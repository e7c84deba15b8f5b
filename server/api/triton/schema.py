"""The ensemble's inputs/outputs (docs/triton-generate.md §2) and the KServe metadata/config built
from them.

The same table drives the generate conversion (triton_parse) and what /v2/models/{m} reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL_VERSION = "1"
TEXT_MODELS = ("ensemble", "tensorrt_llm_bls")  # models that accept the generate text inputs
ALL_TRITON_MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing",
                     "tensorrt_llm_bls")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # BYTES | INT32 | UINT64 | FP32 | BOOL | FP16
    shape: tuple[int, ...]  # including the leading -1 batch dimension
    optional: bool = True


def _s(name: str, dt: str, shape: tuple[int, ...] = (-1, 1), optional: bool = True) -> TensorSpec:
    return TensorSpec(name, dt, shape, optional)


ENSEMBLE_INPUTS: tuple[TensorSpec, ...] = (
    _s("text_input", "BYTES", optional=False),
    _s("max_tokens", "INT32", optional=False),
    _s("decoder_text_input", "BYTES"),
    _s("num_return_sequences", "INT32"),
    _s("bad_words", "BYTES", (-1, -1)),
    _s("stop_words", "BYTES", (-1, -1)),
    _s("exclude_input_in_output", "BOOL"),
    _s("end_id", "INT32"),
    _s("pad_id", "INT32"),
    _s("top_k", "INT32"),
    _s("top_p", "FP32"),
    _s("temperature", "FP32"),
    _s("length_penalty", "FP32"),
    _s("repetition_penalty", "FP32"),
    _s("min_tokens", "INT32"),
    _s("min_length", "INT32"),
    _s("presence_penalty", "FP32"),
    _s("frequency_penalty", "FP32"),
    _s("seed", "UINT64"),
    _s("random_seed", "UINT64"),
    _s("return_log_probs", "BOOL"),
    _s("return_context_logits", "BOOL"),
    _s("return_generation_logits", "BOOL"),
    _s("return_perf_metrics", "BOOL"),
    _s("return_num_input_tokens", "BOOL"),
    _s("return_num_output_tokens", "BOOL"),
    _s("beam_width", "INT32"),
    _s("stream", "BOOL"),
    _s("prompt_embedding_table", "FP16", (-1, -1, -1)),
    _s("prompt_table_extra_id", "UINT64"),
    _s("prompt_vocab_size", "INT32"),
    _s("embedding_bias_words", "BYTES", (-1, -1)),
    _s("embedding_bias_weights", "FP32", (-1, -1)),
    _s("lora_task_id", "UINT64"),
    _s("guided_decoding_guide_type", "BYTES"),
    _s("guided_decoding_guide", "BYTES"),
)
INPUTS_BY_NAME = {spec.name: spec for spec in ENSEMBLE_INPUTS}
ALIASES = {"min_length": "min_tokens", "random_seed": "seed"}  # old name -> current name

ENSEMBLE_OUTPUTS: tuple[TensorSpec, ...] = (
    _s("text_output", "BYTES", (-1, -1)),
    _s("cum_log_probs", "FP32", (-1, -1)),
    _s("output_log_probs", "FP32", (-1, -1, -1)),
    _s("num_input_tokens", "INT32"),
    _s("num_output_tokens", "INT32"),
)

_PLATFORM = {"ensemble": "ensemble", "tensorrt_llm": "tensorrtllm", "preprocessing": "python",
             "postprocessing": "python", "tensorrt_llm_bls": "python"}


def _io(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def model_metadata(name: str, version: str | None) -> dict[str, Any]:
    """KServe v2 model metadata, key order as Triton writes it."""
    return {"name": name, "versions": [version or MODEL_VERSION],
            "platform": _PLATFORM.get(name, "python"),
            "inputs": _io(ENSEMBLE_INPUTS), "outputs": _io(ENSEMBLE_OUTPUTS)}


def _config_io(specs: tuple[TensorSpec, ...], key: str) -> list[dict[str, Any]]:
    def dtype(s: TensorSpec) -> str:
        return "TYPE_STRING" if s.datatype == "BYTES" else f"TYPE_{s.datatype}"

    return [{"name": s.name, "data_type": dtype(s),
             "dims": list(s.shape[1:]), key: s.optional} for s in specs]


def model_config(name: str, max_batch_size: int) -> dict[str, Any]:
    """A faithful subset of the protobuf ModelConfig as JSON (proto field names)."""
    platform = _PLATFORM.get(name, "python")
    return {
        "name": name,
        "platform": "ensemble" if platform == "ensemble" else "",
        "backend": "" if platform == "ensemble" else platform,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size,
        "input": _config_io(ENSEMBLE_INPUTS, "optional"),
        "output": [{k: v for k, v in d.items() if k != "optional"}
                   for d in _config_io(ENSEMBLE_OUTPUTS, "optional")],
        "model_transaction_policy": {"decoupled": True},
        "parameters": {},
    }
