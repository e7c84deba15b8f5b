"""A tiny random-weights Llama (GQA 4/2 heads, 2 layers) and its graphs, for GPU tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.builder import build_model_graph
from engine.config import ModelConfig

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   intermediate_size=128, vocab_size=96, max_position_embeddings=128)
BLOCK_SIZE = 4


def random_weights(cfg: ModelConfig = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    ffn = cfg.intermediate_size

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.08).astype(np.float32)

    out = {"model.embed_tokens.weight": w(cfg.vocab_size, h),
           "lm_head.weight": w(cfg.vocab_size, h), "model.norm.weight": 1 + w(h)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": 1 + w(h),
                p + "post_attention_layernorm.weight": 1 + w(h),
                p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
                p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
                p + "mlp.gate_proj.weight": w(ffn, h), p + "mlp.up_proj.weight": w(ffn, h),
                p + "mlp.down_proj.weight": w(h, ffn)}
    return out


def build_graph(out_dir: Path, dtype: str, rotary_op: bool | None = None,
                block_size: int = BLOCK_SIZE) -> Path:
    """out_dir/model.onnx of TINY in `dtype` (float32: decomposed attention; float16: opset 23;
    `rotary_op`: RoPE as the RotaryEmbedding op, what ONNX Runtime CUDA runs)."""
    build_model_graph(TINY, random_weights(), out_dir, dtype=dtype, block_size=block_size,
                      rotary_op=rotary_op)
    return out_dir / "model.onnx"
