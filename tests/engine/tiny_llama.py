"""Tiny random Llama models and a paged-KV driver for parity tests of the graph and executor."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.config import ModelConfig, RopeScaling
from engine.reference import random_weights  # noqa: F401  (re-exported for the tests)
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
