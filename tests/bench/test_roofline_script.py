"""bench/roofline.py: the matmul roofline the engine benches compare against has exactly the
model graph's weight matmuls, and runs."""

from __future__ import annotations

import collections
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import onnx

from engine.builder import MODEL_FILE, build_model_graph
from engine.config import ModelConfig
from engine.reference import random_weights

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ModelConfig(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     intermediate_size=80, vocab_size=97, rope_theta=10000.0,
                     tie_word_embeddings=True, max_position_embeddings=256)


def _roofline_module() -> ModuleType:
    """Loaded by path: tests/bench (a package) would shadow the repository's bench/ folder."""
    spec = importlib.util.spec_from_file_location("bench_roofline", ROOT / "bench" / "roofline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_roofline_shapes_are_the_graphs_weight_matmuls(tmp_path: Path) -> None:
    build_model_graph(CONFIG, random_weights(CONFIG, 0), tmp_path)
    model = onnx.load(str(tmp_path / MODEL_FILE), load_external_data=False)
    built = collections.Counter(tuple(t.dims) for t in model.graph.initializer
                                if t.name.endswith(".weight_t"))
    roofline = collections.Counter(_roofline_module().weight_shapes(CONFIG))
    assert built == roofline


def test_roofline_runs_for_several_row_counts() -> None:
    roof = _roofline_module().MatmulRoofline(CONFIG, threads=1)
    try:
        assert all(roof.step_s(rows) > 0 for rows in (1, 3, 16))
    finally:
        roof.close()
