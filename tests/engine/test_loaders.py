"""Weight loaders: SmolLM2's GGUF metadata -> ModelConfig, HF names and layouts, and tiny Hugging
Face directories (single file, sharded index, bf16/fp16) written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_hf import TINY, random_weights, write_config, write_safetensors

from engine.config import ModelConfig, ModelError, RopeScaling
from engine.loaders import load_weights
from engine.loaders.gguf import llama3_rope_factors, load_gguf, unpermute_qk
from engine.loaders.hf import load_hf
from engine.loaders.shapes import expected_shapes
from engine.registry import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module")
def smollm2() -> tuple[ModelConfig, dict[str, np.ndarray]]:
    return load_gguf(resolve_model(DEFAULT_MODEL).path)


def test_smollm2_config(smollm2: tuple[ModelConfig, dict[str, np.ndarray]]) -> None:
    """The GGUF metadata gives SmolLM2-135M's exact Hugging Face config."""
    assert smollm2[0] == ModelConfig(
        hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
        intermediate_size=1536, vocab_size=49152, rope_theta=100000.0, rope_scaling=None,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_ids=(2,),
        max_position_embeddings=8192, architecture="LlamaForCausalLM")


def test_smollm2_weights(smollm2: tuple[ModelConfig, dict[str, np.ndarray]]) -> None:
    """HF names, float32, HF shapes; tied embeddings mean no lm_head."""
    config, weights = smollm2
    assert len(weights) == 272
    assert "lm_head.weight" not in weights
    assert {k: v.shape for k, v in weights.items()} == expected_shapes(config)
    assert all(v.dtype == np.float32 for v in weights.values())
    assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert weights["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim in numpy."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_unpermute_inverts_llama_cpp(n_head: int) -> None:
    w = np.arange(n_head * 64 * 5, dtype=np.float32).reshape(n_head * 64, 5)
    assert np.array_equal(unpermute_qk(llama_cpp_permute(w, n_head), n_head), w)
    assert not np.array_equal(llama_cpp_permute(w, n_head), w)


def test_llama3_rope_factors_known_values() -> None:
    """Llama-3.1 scaling: highest frequency unscaled, lowest divided by the factor."""
    f = llama3_rope_factors(RopeScaling(), head_dim=128, theta=500000.0)
    assert f.shape == (64,)
    assert f[0] == 1.0 and f[-1] == 8.0


def test_hf_single_file(tmp_path: Path) -> None:
    weights = random_weights(TINY)
    write_config(tmp_path, rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192})
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    write_safetensors(tmp_path / "model.safetensors", weights)
    config, loaded = load_weights(tmp_path)
    assert config == ModelConfig(
        hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
        intermediate_size=12, vocab_size=32, rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=32.0), rms_norm_eps=1e-6, bos_token_id=1,
        eos_token_ids=(2, 7), max_position_embeddings=128)
    assert loaded.keys() == weights.keys()
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)


def test_hf_sharded_bf16_and_fp16(tmp_path: Path) -> None:
    """Two shards via model.safetensors.index.json, one bf16 and one fp16, widened to fp32."""
    config = ModelConfig(**{**{f: getattr(TINY, f) for f in TINY.__dataclass_fields__},
                            "tie_word_embeddings": True})
    weights = random_weights(config)
    names = sorted(weights)
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    write_config(tmp_path, tie_word_embeddings=True)
    write_safetensors(tmp_path / "a.safetensors", {n: weights[n] for n in first}, "BF16")
    write_safetensors(tmp_path / "b.safetensors", {n: weights[n] for n in second}, "F16")
    index = {"weight_map": {**{n: "a.safetensors" for n in first},
                            **{n: "b.safetensors" for n in second}}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded_config, loaded = load_hf(tmp_path)
    assert loaded_config.tie_word_embeddings
    assert loaded.keys() == weights.keys()
    bf16 = (weights[first[0]].view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.array_equal(loaded[first[0]], bf16)
    fp16 = weights[second[0]].astype(np.float16).astype(np.float32)
    assert np.array_equal(loaded[second[0]], fp16)
    assert all(v.dtype == np.float32 for v in loaded.values())


def llama_cpp_permute_all(weights: dict[str, np.ndarray], config: ModelConfig
                          ) -> dict[str, np.ndarray]:
    out = dict(weights)
    for name, array in weights.items():
        if name.endswith("q_proj.weight"):
            out[name] = llama_cpp_permute(array, config.num_heads)
        elif name.endswith("k_proj.weight"):
            out[name] = llama_cpp_permute(array, config.num_kv_heads)
    return out


def write_tiny_gguf(path: Path, config: ModelConfig, weights: dict[str, np.ndarray]) -> None:
    """A llama GGUF as llama.cpp's converter lays it out (permuted Q/K, GGUF tensor names)."""
    import gguf

    from engine.loaders.gguf import GLOBAL_TENSORS, LAYER_TENSORS

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    to_gguf = {v: k for k, v in GLOBAL_TENSORS.items()}
    to_gguf.update({f"model.layers.{i}.{v}": f"blk.{i}.{k}" for i in range(config.num_layers)
                    for k, v in LAYER_TENSORS.items()})
    for name, array in llama_cpp_permute_all(weights, config).items():
        writer.add_tensor(to_gguf[name], array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_tiny_gguf_round_trip(tmp_path: Path) -> None:
    """An untied f32 llama GGUF loads back to the exact HF weights (Q/K un-permuted)."""
    config = ModelConfig(hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
                         intermediate_size=24, vocab_size=40, rope_theta=500000.0,
                         rms_norm_eps=1e-6, bos_token_id=1, eos_token_ids=(2,),
                         max_position_embeddings=256)
    weights = random_weights(config, seed=5)
    write_tiny_gguf(tmp_path / "tiny.gguf", config, weights)
    loaded_config, loaded = load_gguf(tmp_path / "tiny.gguf")
    assert loaded_config == config
    assert loaded.keys() == weights.keys()
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)


def test_corrupt_safetensors_is_one_model_error(tmp_path: Path) -> None:
    """The safetensors library's error becomes a ModelError naming the file."""
    from engine.loaders.st_reader import load_safetensors

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10" + b"\x00" * 7 + b'{"a":1}')
    with pytest.raises(ModelError, match="corrupt safetensors file .*bad.safetensors"):
        load_safetensors(bad)
