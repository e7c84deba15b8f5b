"""Tiny Hugging Face model directories for engine tests: config.json, safetensors written by an
independent minimal writer (F32/F16/BF16), and a byte-level BPE tokenizer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from engine.config import ModelConfig
from engine.loaders.shapes import expected_shapes

TINY = ModelConfig(hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
                   intermediate_size=12, vocab_size=32, tie_word_embeddings=False)


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in expected_shapes(config).items()}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32") -> None:
    """Minimal safetensors writer (F32, F16 or BF16 by truncation) independent of our reader."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        if dtype == "BF16":
            raw = (array.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raw = array.astype("<f2" if dtype == "F16" else "<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def write_config(model_dir: Path, **overrides: object) -> None:
    body = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 12,
            "vocab_size": 32, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
            "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2,
            "tie_word_embeddings": False, **overrides}
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(body))


def write_tiny_tokenizer(model_dir: Path) -> None:
    vocab = {chr(c): i for i, c in enumerate(range(ord("a"), ord("a") + 30))}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<s>", "</s>"])
    backend.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
