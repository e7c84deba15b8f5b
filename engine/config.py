"""Model configuration for the Llama family (Llama 2/3/3.1, SmolLM, Mistral-style GQA)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.dtypes import DTYPE_BYTES


class ModelError(ValueError):
    """A model cannot be loaded or used: missing file, corrupt data, unsupported architecture.

    The message names the problem and the path; callers show it as is (no stack trace).
    """


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Llama-3 style RoPE frequency scaling (`rope_type: llama3` in config.json)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shapes and constants of a Llama-family decoder. Weights use Hugging Face names/layouts."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    max_position_embeddings: int = 2048
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                value = getattr(self, name)
                raise ModelError(f"model config: {name} must be positive, got {value}")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(
                f"model config: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ModelError(f"model config: head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_bytes_per_block(self, block_size: int, dtype: str) -> int:
        """Bytes of one KV block of `block_size` tokens in a pool of `dtype` (a DTYPE_NAMES
        name): K and V of every layer and KV head, the pool layout [L, 2, KVH, NB, BS, D]."""
        per_token = self.num_layers * 2 * self.num_kv_heads * self.head_dim
        return per_token * block_size * DTYPE_BYTES[dtype]
