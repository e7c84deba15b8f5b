"""Plain numpy forward of a Llama decoder over one full sequence, in float64.

Written independently of the ONNX graph code (no shared helpers, the textbook formulation:
repeat_kv GQA, rotate_half RoPE, full causal mask) so that it can catch graph bugs. Slow and
simple on purpose; used by tests and debugging only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from engine.config import ModelConfig


def reference_logits(config: ModelConfig, weights: Mapping[str, np.ndarray],
                     token_ids: Sequence[int]) -> np.ndarray:
    """float64 logits [len(token_ids), vocab] of every position of one sequence."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    ids = np.asarray(token_ids, dtype=np.int64)
    x = w["model.embed_tokens.weight"][ids]  # [S, hidden]
    cos, sin = _rope_cos_sin(config, len(ids))  # [S, D] each
    for i in range(config.num_layers):
        x = _layer(config, w, f"model.layers.{i}.", x, cos, sin)
    x = _rms_norm(x, w["model.norm.weight"], config.rms_norm_eps)
    head = w["model.embed_tokens.weight"] if config.tie_word_embeddings else w["lm_head.weight"]
    return x @ head.T


def _layer(config: ModelConfig, w: Mapping[str, np.ndarray], p: str, x: np.ndarray,
           cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    seq, d = x.shape[0], config.head_dim
    h = _rms_norm(x, w[p + "input_layernorm.weight"], config.rms_norm_eps)
    q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(seq, config.num_heads, d)
    k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(seq, config.num_kv_heads, d)
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(seq, config.num_kv_heads, d)
    q = q * cos[:, None, :] + _rotate_half(q) * sin[:, None, :]
    k = k * cos[:, None, :] + _rotate_half(k) * sin[:, None, :]
    k = np.repeat(k, config.group_size, axis=1)  # [S, H, D]: head h uses kv head h // G
    v = np.repeat(v, config.group_size, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)  # [H, S, S]
    scores = np.where(np.tril(np.ones((seq, seq), dtype=bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    attn = np.einsum("hqk,khd->qhd", probs, v).reshape(seq, -1)  # [S, H*D]
    x = x + attn @ w[p + "self_attn.o_proj.weight"].T
    h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], config.rms_norm_eps)
    gate = h @ w[p + "mlp.gate_proj.weight"].T
    up = h @ w[p + "mlp.up_proj.weight"].T
    return x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _inv_freq(config: ModelConfig) -> np.ndarray:
    """HF `_compute_default_rope_parameters` / `_compute_llama3_parameters`, element by element."""
    d = config.head_dim
    base = [1.0 / config.rope_theta ** (i / d) for i in range(0, d, 2)]
    rs = config.rope_scaling
    if rs is None:
        return np.array(base)
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    out = []
    for f in base:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / rs.factor)
        else:
            smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
                rs.high_freq_factor - rs.low_freq_factor)
            out.append((1 - smooth) * f / rs.factor + smooth * f)
    return np.array(out)


def _rope_cos_sin(config: ModelConfig, seq: int) -> tuple[np.ndarray, np.ndarray]:
    freqs = np.outer(np.arange(seq, dtype=np.float64), _inv_freq(config))  # [S, D/2]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [S, D]
    return np.cos(emb), np.sin(emb)


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named float32 weights; scales keep logits O(1) so relative errors are meaningful."""
    rng = np.random.default_rng(seed)
    hd, ffn = config.hidden_size, config.intermediate_size
    qd, kd = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((config.vocab_size, hd))
         .astype(np.float32), "model.norm.weight": norm(hd)}
    if not config.tie_word_embeddings:
        w["lm_head.weight"] = mat(config.vocab_size, hd)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": norm(hd),
              p + "post_attention_layernorm.weight": norm(hd),
              p + "self_attn.q_proj.weight": mat(qd, hd) * 2.0,
              p + "self_attn.k_proj.weight": mat(kd, hd) * 2.0,
              p + "self_attn.v_proj.weight": mat(kd, hd),
              p + "self_attn.o_proj.weight": mat(hd, qd),
              p + "mlp.gate_proj.weight": mat(ffn, hd), p + "mlp.up_proj.weight": mat(ffn, hd),
              p + "mlp.down_proj.weight": mat(hd, ffn)}
    return w
