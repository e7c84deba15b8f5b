"""The tensors a Llama decoder needs, by Hugging Face name and shape, and the check every
weights source (GGUF, HF directory, the graph builder's input) goes through."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine.config import ModelConfig, ModelError


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF weight name -> shape, for every tensor a Llama decoder needs."""
    h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    per_layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (config.num_heads * d, h),
        "self_attn.k_proj.weight": (config.num_kv_heads * d, h),
        "self_attn.v_proj.weight": (config.num_kv_heads * d, h),
        "self_attn.o_proj.weight": (h, config.num_heads * d),
        "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }
    for layer in range(config.num_layers):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{layer}.{name}"] = shape
    return shapes


def check_weights(weights: Mapping[str, np.ndarray], config: ModelConfig, where: str | Path
                  ) -> None:
    """Every needed tensor present with its expected shape, else ModelError naming the first
    (and `where` the weights came from)."""
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            raise ModelError(f"weight {name} missing in {where}")
        if tuple(weights[name].shape) != shape:
            raise ModelError(f"weight {name} has shape {tuple(weights[name].shape)}, "
                             f"expected {shape} in {where}")
