"""Bad models and options fail with one clear ModelError (or ValueError) naming the problem,
never a deep stack trace; the tiny HF model also runs end to end through load_model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiny_hf import TINY, random_weights, write_config, write_safetensors, write_tiny_tokenizer

from engine.builder import build_model_graph
from engine.config import ModelConfig, ModelError
from engine.generate import greedy_generate
from engine.limits import check_max_context
from engine.loaders import load_weights
from engine.loaders.gguf import load_gguf
from engine.loaders.hf import load_hf
from engine.reference import reference_logits
from engine.registry import DEFAULT_MODEL, resolve_model
from engine.runtime import EngineOptions, LoadedModel, load_model
from server.cli.main import main as cli_main


def write_gguf(path: Path, arch: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    write_config(model_dir)
    write_safetensors(model_dir / "model.safetensors", random_weights(TINY, seed=3))
    write_tiny_tokenizer(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    cache = tmp_path_factory.mktemp("tiny-cache")
    model = load_model(EngineOptions(model=str(tiny_dir), cache_dir=str(cache),
                                     kv_cache_blocks=8, max_context=64))
    yield model
    model.close()


def test_missing_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="unknown model .*nope.gguf"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_weights(path)


def test_corrupt_gguf(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(ModelError, match="corrupt or truncated GGUF"):
        load_gguf(path)


@pytest.mark.parametrize("keep", [3_000_000, -1000])
def test_truncated_gguf(tmp_path: Path, keep: int) -> None:
    """Cut in the tensor table region or in the last tensor's data."""
    data = resolve_model(DEFAULT_MODEL).path.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(ModelError, match="corrupt or truncated GGUF"):
        load_gguf(path)


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    path = tmp_path / "bert.gguf"
    write_gguf(path, "bert")
    with pytest.raises(ModelError, match="unsupported GGUF architecture 'bert'"):
        load_gguf(path)


def test_unsupported_hf_architecture(tmp_path: Path) -> None:
    write_config(tmp_path, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ModelError, match=r"unsupported architecture \['GPT2LMHeadModel'\]"):
        load_hf(tmp_path)


def test_hf_missing_key_and_shard(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "missing.safetensors"}}))
    with pytest.raises(ModelError, match="missing.safetensors listed in .* is missing"):
        load_hf(tmp_path)
    body = json.loads((tmp_path / "config.json").read_text())
    del body["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(body))
    with pytest.raises(ModelError, match="lacks required key 'intermediate_size'"):
        load_hf(tmp_path)


def test_hf_wrong_weight_shape(tmp_path: Path) -> None:
    weights = random_weights(TINY)
    weights["model.norm.weight"] = np.zeros(9, np.float32)
    write_config(tmp_path)
    write_safetensors(tmp_path / "model.safetensors", weights)
    with pytest.raises(ModelError, match=r"model.norm.weight has shape \(9,\), expected \(8,\)"):
        load_hf(tmp_path)


def test_builder_rejects_missing_or_misshaped_weights(tmp_path: Path) -> None:
    """The builder runs the loaders' check on what it is given, before writing anything."""
    weights = random_weights(TINY)
    del weights["model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(ModelError, match=r"weight model.layers.0.mlp.up_proj.weight missing in "
                                         r"the graph builder's weights"):
        build_model_graph(TINY, weights, tmp_path / "a")
    weights = random_weights(TINY)
    weights["model.norm.weight"] = np.zeros(9, np.float32)
    with pytest.raises(ModelError, match=r"model.norm.weight has shape \(9,\), expected \(8,\)"):
        build_model_graph(TINY, weights, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="without config.json"):
        resolve_model(str(tmp_path))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        EngineOptions(backend="cuda")
    with pytest.raises(ValueError, match="kv_cache_fraction must be in"):
        EngineOptions(kv_cache_fraction=0.0)
    with pytest.raises(ValueError, match="block_size must be positive"):
        EngineOptions(block_size=0)


def test_context_beyond_max() -> None:
    config = ModelConfig(hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                         intermediate_size=8, vocab_size=16, max_position_embeddings=128)
    assert check_max_context(EngineOptions(), config) == 128
    assert check_max_context(EngineOptions(max_context=100), config) == 100
    with pytest.raises(ModelError, match="max_context 129 exceeds the model's maximum context "
                                         "of 128 tokens"):
        check_max_context(EngineOptions(max_context=129), config)


def test_load_model_context_beyond_max(tiny: LoadedModel, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="max_context 4096 exceeds the model's maximum context "
                                         "of 128 tokens"):
        load_model(EngineOptions(model=str(tiny_dir), cache_dir=str(tmp_path),
                                 max_context=4096))


def test_tiny_hf_model_runs(tiny: LoadedModel, tiny_dir: Path) -> None:
    """The HF path end to end: greedy tokens equal the argmax of the numpy reference."""
    prompt = tiny.tokenizer.encode("abcab")
    assert prompt == [30, 0, 1, 2, 0, 1]  # BOS prepended (add_bos_token)
    out = list(greedy_generate(tiny.executor, prompt, 6))
    config, weights = load_hf(tiny_dir)
    expected, seq = [], list(prompt)
    for _ in range(6):
        expected.append(int(np.argmax(reference_logits(config, weights, seq)[-1])))
        seq.append(expected[-1])
    assert out == expected
    assert (tiny.name, tiny.tokenizer.eos_token_ids) == (tiny_dir.name.lower(), (2, 31))


def test_cli_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["generate", "--prompt", "x", "--model", str(tmp_path / "none.gguf")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("trtserve generate: error: unknown model ")
    assert "Traceback" not in err and err.count("\n") == 1


def test_cpu_threads_reach_the_onnxruntime_sessions(tiny_dir: Path, tmp_path: Path) -> None:
    """EngineOptions.cpu_threads sets the intra-op threads of the CPU executor's session."""
    model = load_model(EngineOptions(model=str(tiny_dir), cache_dir=str(tmp_path),
                                     kv_cache_blocks=8, max_context=64, cpu_threads=1))
    try:
        session = model.executor.session  # type: ignore[attr-defined]
        assert session.get_session_options().intra_op_num_threads == 1
    finally:
        model.close()
