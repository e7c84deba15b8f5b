"""The graph cache: keys change only with their inputs, entries appear atomically, an interrupted
build leaves nothing behind, concurrent builders build once."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from engine.cache import (
    ConsoleProgress,
    build_entry,
    cache_key,
    cache_root,
    config_from_json,
    config_to_json,
    entry_dir,
    read_manifest,
    weights_hash,
)
from engine.config import ModelConfig, RopeScaling
from engine.kv_sizing import kv_cache_blocks
from engine.options import EngineOptions


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRTSERVE_CACHE_DIR", raising=False)
    assert cache_root() == Path("~/.cache/trtserve").expanduser()
    monkeypatch.setenv("TRTSERVE_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(str(tmp_path / "opt")) == tmp_path / "opt"


def test_key_changes_with_each_input(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF weights v1")
    digest = weights_hash(model)
    base = cache_key(digest, "1", "float32", 16)
    assert base == cache_key(weights_hash(model), "1", "float32", 16)
    assert len({base, cache_key(digest, "2", "float32", 16),
                cache_key(digest, "1", "float16", 16), cache_key(digest, "1", "float32", 32),
                cache_key(digest, "1", "float32", 16, "fast"),
                cache_key(digest, "1", "float32", 16, "exact", rotary_op=True)}) == 6
    assert cache_key(digest, "1", "float32", 16, "exact") == base
    model.write_bytes(b"GGUF weights v2")
    assert weights_hash(model) != digest


def test_build_entry_once_and_atomic(tmp_path: Path) -> None:
    entry = entry_dir(tmp_path, "m", "k")
    calls: list[Path] = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        assert not entry.exists()  # the entry appears only by the final rename
        (tmp / "model.onnx").write_bytes(b"graph")
        return {"name": "m"}

    assert build_entry(entry, build) == entry
    assert build_entry(entry, build) == entry
    assert len(calls) == 1
    assert read_manifest(entry)["name"] == "m"
    assert (entry / "model.onnx").read_bytes() == b"graph"


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    entry = entry_dir(tmp_path, "m", "k")

    def failing(tmp: Path) -> dict:
        (tmp / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_entry(entry, failing)
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    entry = entry_dir(tmp_path, "m", "k")
    calls: list[int] = []
    start = threading.Barrier(4)

    def build(tmp: Path) -> dict:
        calls.append(1)
        return {"name": "m"}

    def worker() -> None:
        start.wait()
        build_entry(entry, build)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]


def test_config_json_round_trip() -> None:
    config = ModelConfig(hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
                         intermediate_size=12, vocab_size=32, rope_scaling=RopeScaling(factor=4.0),
                         eos_token_ids=(2, 7))
    assert config_from_json(config_to_json(config)) == config


def test_kv_blocks_from_fraction() -> None:
    config = ModelConfig(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                         head_dim=64, intermediate_size=1536, vocab_size=49152)
    assert config.kv_bytes_per_block(16, "float32") == 737_280
    opts = EngineOptions(kv_cache_fraction=0.5)
    assert kv_cache_blocks(opts, config, 8192, "float32", available=737_280 * 2000) == 1000
    # capped at 2 GiB however much memory is free; never below one full-context sequence
    assert kv_cache_blocks(opts, config, 8192, "float32", available=1 << 40) == 2912
    assert kv_cache_blocks(opts, config, 8192, "float32", available=0) == 512
    assert kv_cache_blocks(EngineOptions(kv_cache_blocks=7), config, 8192, "float32") == 7


def test_progress_bar_non_tty() -> None:
    """(done, total) callbacks drive a tqdm bar that ends at 100% and closes."""
    out = io.StringIO()
    bar = ConsoleProgress("build", out)
    for i in range(1, 11):
        bar(i, 10)
    final = out.getvalue().split("\r")[-1].strip()
    assert final.startswith("build |" + "#" * 30 + "| 100%"), final  # ASCII off a terminal
    assert out.getvalue().endswith("\n")
