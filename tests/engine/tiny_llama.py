"""Tiny random Llama models and a paged-KV driver for parity tests of the graph and executor."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.config import ModelConfig, RopeScaling
from scheduler.plan import ScheduledSeq


def tiny_config(*, heads: int, kv_heads: int, scaled_rope: bool, tied: bool,
                layers: int = 2, head_dim: int = 16) -> ModelConfig:
    """A 2-layer model; with `scaled_rope`, Llama-3 scaling hits low, medium and high bands."""
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64) if scaled_rope else None
    return ModelConfig(hidden_size=48, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=head_dim, intermediate_size=80, vocab_size=97,
                       rope_theta=10000.0, rope_scaling=scaling, rms_norm_eps=1e-5,
                       tie_word_embeddings=tied, max_position_embeddings=256)


def random_weights(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
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


@dataclass
class PagedSeq:
    """A sequence as the scheduler would hold it: tokens fed so far and its block table."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)  # tokens already in the KV pool
    block_table: list[int] = field(default_factory=list)


class ShuffledBlocks:
    """Hands out block ids in a random order, so block tables are non-contiguous."""

    def __init__(self, num_blocks: int, seed: int) -> None:
        self._free = list(np.random.default_rng(seed).permutation(num_blocks))

    def grow(self, seq: PagedSeq, length: int, block_size: int) -> None:
        while len(seq.block_table) * block_size < length:
            seq.block_table.append(int(self._free.pop()))


def schedule(seq: PagedSeq, new_tokens: list[int], blocks: ShuffledBlocks, block_size: int,
             want_logits: bool = True) -> ScheduledSeq:
    """The ScheduledSeq feeding `new_tokens` after what the sequence has; records them."""
    start = len(seq.tokens)
    blocks.grow(seq, start + len(new_tokens), block_size)
    seq.tokens += new_tokens
    return ScheduledSeq(seq_id=seq.seq_id, token_ids=list(new_tokens), start_pos=start,
                        block_table=list(seq.block_table), want_logits=want_logits)


def assert_close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    """Every element within `rel` of the reference's largest magnitude (plus rtol per element)."""
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * float(np.abs(ref).max()))
