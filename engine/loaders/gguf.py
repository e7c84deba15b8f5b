"""Llama-architecture GGUF files -> (ModelConfig, float32 weights with Hugging Face names/layouts).

llama.cpp's converter stores Q and K projection rows interleaved per head (it permutes the HF
rotate_half layout into the GPT-J pair layout); `unpermute_qk` undoes that so every consumer of
these weights sees exactly what `LlamaForCausalLM` would load from safetensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ModelConfig, ModelError, RopeScaling
from engine.loaders.shapes import check_weights

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF per-layer tensor name -> Hugging Face per-layer name (both without the "blk.{i}." prefix)
LAYER_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

ProgressFn = Callable[[int, int], None]  # (done, total)


def open_gguf(path: str | Path) -> Any:
    """Open a GGUF file with `gguf.GGUFReader`; every failure becomes one clear ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF file (bad magic {magic!r}): {path}")
    import gguf  # deferred: importing gguf costs ~0.3 s

    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises whatever numpy/struct raise on bad data
        raise ModelError(f"corrupt or truncated GGUF file {path}: {exc}") from None


def read_field(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value as a Python scalar / str / list, or `default` when absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except Exception as exc:
        raise ModelError(f"GGUF metadata {key!r} is unreadable: {exc}") from None


def gguf_architecture(reader: Any, path: str | Path) -> str:
    arch = read_field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"unsupported GGUF architecture {arch!r} in {path}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return str(arch)


def shortest_float(value: float) -> float:
    """GGUF stores float32: 9.999999747e-06 -> 1e-05, the value the HF config.json had."""
    return float(str(np.float32(value)))


def _required(reader: Any, key: str, path: str | Path) -> Any:
    value = read_field(reader, key)
    if value is None:
        raise ModelError(f"GGUF metadata {key!r} missing in {path}")
    return value


def _eos_ids(reader: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                "tokenizer.ggml.eom_token_id"):
        value = read_field(reader, key)
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return tuple(ids)


def llama3_rope_factors(scaling: RopeScaling, head_dim: int, theta: float) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for Llama-3 scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    factors = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    factors = np.where(wavelen < high_wavelen, 1.0, factors)
    return np.where(wavelen > low_wavelen, scaling.factor, factors)


def _rope_scaling(reader: Any, arch: str, head_dim: int, theta: float,
                  path: str | Path) -> RopeScaling | None:
    kind = read_field(reader, f"{arch}.rope.scaling.type")
    if kind not in (None, "none"):
        raise ModelError(f"unsupported RoPE scaling type {kind!r} in {path}")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None:
        return None
    stored = np.asarray(freqs.data, dtype=np.float64).reshape(-1)
    original = int(read_field(reader, f"{arch}.rope.scaling.original_context_length", 8192))
    scaling = RopeScaling(factor=float(stored.max()), original_max_position_embeddings=original)
    expected = llama3_rope_factors(scaling, head_dim, theta)
    if expected.shape != stored.shape or not np.allclose(expected, stored, rtol=1e-4):
        raise ModelError(f"unsupported rope_freqs.weight (not Llama-3 scaling) in {path}")
    return scaling


def config_from_gguf(reader: Any, path: str | Path) -> ModelConfig:
    """ModelConfig from llama-architecture GGUF metadata."""
    arch = gguf_architecture(reader, path)
    hidden = int(_required(reader, f"{arch}.embedding_length", path))
    heads = int(_required(reader, f"{arch}.attention.head_count", path))
    head_dim = int(read_field(reader, f"{arch}.attention.key_length", hidden // max(heads, 1)))
    theta = shortest_float(read_field(reader, f"{arch}.rope.freq_base", 10000.0))
    names = {t.name for t in reader.tensors}
    tokens = read_field(reader, "tokenizer.ggml.tokens") if "tokenizer.ggml.tokens" in \
        reader.fields else None
    vocab = read_field(reader, f"{arch}.vocab_size", len(tokens) if tokens else None)
    if vocab is None:
        raise ModelError(f"GGUF metadata {arch}.vocab_size missing in {path}")
    bos = read_field(reader, "tokenizer.ggml.bos_token_id")
    return ModelConfig(
        hidden_size=hidden,
        num_layers=int(_required(reader, f"{arch}.block_count", path)),
        num_heads=heads,
        num_kv_heads=int(read_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(_required(reader, f"{arch}.feed_forward_length", path)),
        vocab_size=int(vocab),
        rope_theta=theta,
        rope_scaling=_rope_scaling(reader, arch, head_dim, theta, path),
        rms_norm_eps=shortest_float(
            read_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=_eos_ids(reader),
        max_position_embeddings=int(read_field(reader, f"{arch}.context_length", 2048)),
    )


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: [heads, dim/2, 2, in] -> [heads, 2, dim/2, in]."""
    rows = weight.shape[0]
    w = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weight.shape))


def hf_name(gguf_name: str) -> str | None:
    """Hugging Face name of a GGUF tensor, or None for tensors we do not use."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}"
    return None


def _dequantize(tensor: Any, path: str | Path) -> np.ndarray:
    from gguf.quants import dequantize

    try:
        out = dequantize(tensor.data, tensor.tensor_type)
    except Exception as exc:
        raise ModelError(f"cannot dequantize tensor {tensor.name} "
                         f"({tensor.tensor_type.name}) in {path}: {exc}") from None
    return np.ascontiguousarray(out, dtype=np.float32)


def weights_from_gguf(reader: Any, config: ModelConfig, path: str | Path,
                      progress: ProgressFn | None = None) -> dict[str, np.ndarray]:
    """All tensors dequantized to float32, renamed to HF names, Q/K rows back in HF layout."""
    weights: dict[str, np.ndarray] = {}
    tensors = list(reader.tensors)
    for done, tensor in enumerate(tensors, 1):
        name = hf_name(tensor.name)
        if name is None:
            logger.debug("skipping GGUF tensor %s", tensor.name)
            continue
        array = _dequantize(tensor, path)
        if name.endswith("q_proj.weight"):
            array = unpermute_qk(array, config.num_heads)
        elif name.endswith("k_proj.weight"):
            array = unpermute_qk(array, config.num_kv_heads)
        weights[name] = array
        if progress is not None:
            progress(done, len(tensors))
    check_weights(weights, config, path)
    return weights


def load_gguf(path: str | Path,
              progress: ProgressFn | None = None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read a llama-architecture GGUF: its config and float32 weights with HF names/layouts."""
    reader = open_gguf(path)
    config = config_from_gguf(reader, path)
    return config, weights_from_gguf(reader, config, path, progress)
