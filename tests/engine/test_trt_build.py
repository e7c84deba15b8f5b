"""TensorRT engine build on a CPU-only machine (TensorRT for RTX), the engine cache key, and the
one-line "this runtime refuses this GPU" start-up error. Needs no GPU."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.builder import build_model_graph
from engine.config import ModelConfig
from engine.device.step_io import StepLimits
from engine.executors import trt_build
from engine.executors.trt import deserialize_or_refuse, profile_dims, refusal_message
from engine.executors.trt_build import TensorRTError, TrtModule
from engine.reference import random_weights

CFG = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=96, max_position_embeddings=128)
BLOCK = 4
TARGETS = ("SM86",)




@pytest.fixture(scope="module")
def trt() -> TrtModule:
    try:
        return trt_build.import_tensorrt()
    except TensorRTError as exc:
        pytest.skip(f"no TensorRT flavour importable: {exc}")


@pytest.fixture()
def graph(tmp_path: Path) -> Path:
    build_model_graph(CFG, random_weights(CFG), tmp_path, dtype="float16", block_size=BLOCK)
    return tmp_path / "model.onnx"


def dims(num_blocks: int = 32, max_tokens: int = 32) -> dict[str, trt_build.DimRange]:
    return profile_dims(CFG, StepLimits(max_tokens, 4, CFG.max_position_embeddings), BLOCK,
                        num_blocks)


def test_engine_builds_without_gpu_and_is_cached(trt: TrtModule, graph: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A serialized engine is produced next to the graph; the second load reads the cache."""
    if trt.flavor != "tensorrt_rtx":
        pytest.skip("only TensorRT for RTX builds for an explicit target without a GPU")
    path, blob = trt_build.load_or_build(graph, dims(), targets=TARGETS, trt=trt)
    assert path.parent == graph.parent and path.exists()
    assert path.name.startswith(f"model.tensorrt_rtx-{trt.version}.sm86.")
    assert len(blob) > 10_000 and path.read_bytes() == blob

    def no_build(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("rebuilt although the engine is cached")

    monkeypatch.setattr(trt_build, "build_serialized", no_build)
    again, blob2 = trt_build.load_or_build(graph, dims(), targets=TARGETS, trt=trt)
    assert again == path and blob2 == blob


def test_parsed_network_io_matches_the_graph(trt: TrtModule, graph: Path) -> None:
    """TensorRT sees exactly the graph's inputs/outputs, with int64 indices and fp16 KV."""
    io = trt_build.network_io(graph, trt)
    want_inputs = ("input_ids", "positions", "kv_cache", "block_tables", "past_lens",
                   "pad_index", "unpad_index", "logit_index")
    assert [n for n, (k, _) in io.items() if k == "input"] == list(want_inputs)
    assert [n for n, (k, _) in io.items() if k == "output"] == ["logits", "new_kv", "argmax"]
    assert io["kv_cache"][1] == io["new_kv"][1] == "half"
    assert io["logits"][1] == "float"
    assert all(io[n][1] == "int64" for n in want_inputs if n != "kv_cache")


def test_bf16_graph_builds_into_a_bf16_engine(trt: TrtModule, tmp_path: Path) -> None:
    """The bfloat16 graph variant parses with bf16 KV I/O and float32 logits, and builds."""
    if trt.flavor != "tensorrt_rtx":
        pytest.skip("only TensorRT for RTX builds for an explicit target without a GPU")
    build_model_graph(CFG, random_weights(CFG), tmp_path, dtype="bfloat16", block_size=BLOCK)
    io = trt_build.network_io(tmp_path / "model.onnx", trt)
    assert io["kv_cache"][1] == io["new_kv"][1] == "bf16"
    assert io["logits"][1] == "float"
    path, blob = trt_build.load_or_build(tmp_path / "model.onnx", dims(), targets=TARGETS,
                                         trt=trt)
    assert path.exists() and len(blob) > 10_000


def test_profile_covers_every_symbolic_dim(graph: Path) -> None:
    """Each dynamic graph dim gets a (min, opt, max) range; the pool dim rounds up to 2^k."""
    shapes = trt_build.profile_shapes(trt_build.onnx_input_shapes(graph), dims(num_blocks=20))
    lo, opt, hi = shapes["kv_cache"]
    rows = CFG.num_layers * 2 * CFG.num_kv_heads
    assert lo == (rows, BLOCK, 16) and opt == (rows * 20, BLOCK, 16)
    assert hi == (rows * 32, BLOCK, 16)
    assert shapes["input_ids"] == ((1,), (32,), (32,))
    with pytest.raises(TensorRTError, match="'T'"):
        trt_build.profile_shapes({"input_ids": ["T"]}, {})


def test_cache_key_tracks_version_target_profile_and_graph(trt: TrtModule, graph: Path) -> None:
    """Same inputs -> same file; another TensorRT, GPU, profile or graph -> another file."""
    base = trt_build.engine_path(graph, trt, "sm86", dims())
    assert trt_build.engine_path(graph, trt, "sm86", dims()) == base
    other_version = TrtModule(SimpleNamespace(__version__="99.0"), trt.flavor)  # type: ignore[arg-type]
    assert trt_build.engine_path(graph, other_version, "sm86", dims()) != base
    assert trt_build.engine_path(graph, trt, "sm89", dims()) != base
    assert trt_build.engine_path(graph, trt, "sm86", dims(max_tokens=64)) != base
    stat = graph.stat()
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert trt_build.engine_path(graph, trt, "sm86", dims()) != base


def test_build_targets_follow_the_gpu(trt: TrtModule) -> None:
    """On a GPU the key names its SM; RTX builds for that SM when it lists it, else the nearest
    lower listed SM (deserialize then accepts or refuses); full TensorRT builds for CURRENT."""
    caps = SimpleNamespace(SM75=0, SM80=1, SM86=2, SM89=3, SM120=4, CURRENT=5)
    rtx = TrtModule(SimpleNamespace(ComputeCapability=caps), "tensorrt_rtx")  # type: ignore[arg-type]
    assert trt_build.build_targets(rtx, (8, 6), None) == (("SM86",), "sm86")
    assert trt_build.build_targets(rtx, (9, 0), None) == (("SM89",), "sm90")  # runtime decides
    assert trt_build.build_targets(rtx, (12, 0), None) == (("SM120",), "sm120")
    assert trt_build.build_targets(rtx, (7, 0), None) == (("CURRENT",), "sm70")
    full = TrtModule(SimpleNamespace(), "tensorrt")  # type: ignore[arg-type]
    assert trt_build.build_targets(full, (9, 0), None) == (("CURRENT",), "sm90")
    assert trt_build.build_targets(rtx, None, ("SM86", "SM89")) == (("SM86", "SM89"), "sm86+sm89")
    with pytest.raises(TensorRTError, match="build targets"):
        trt_build.build_targets(rtx, None, None)


class _RefusingRuntime:
    """Stands in for trt.Runtime on a GPU the runtime does not support."""

    def deserialize_cuda_engine(self, blob: bytes) -> None:
        return None


def test_refused_gpu_gives_one_clear_line() -> None:
    """deserialize -> None becomes one line naming the runtime, the GPU and the alternative."""
    rtx = TrtModule(SimpleNamespace(__version__="1.7.1.116"), "tensorrt_rtx")  # type: ignore[arg-type]
    with pytest.raises(TensorRTError) as info:
        deserialize_or_refuse(rtx, _RefusingRuntime(), b"engine",
                              "NVIDIA H100 80GB HBM3, compute capability 9.0")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("TensorRT for RTX 1.7.1.116 cannot run on this GPU (NVIDIA H100")
    assert msg.endswith("start the server with --backend onnxruntime instead")


def test_refusal_includes_validity_diagnostics_on_one_line() -> None:
    """When the runtime can explain (get_engine_validity), the reason is kept, flattened."""

    class Explaining(_RefusingRuntime):
        def get_engine_validity(self, blob: bytes) -> tuple[Any, str]:
            return SimpleNamespace(name="INVALID"), "UNSUPPORTED_CC\nmore"

    rtx = TrtModule(SimpleNamespace(__version__="1.7"), "tensorrt_rtx")  # type: ignore[arg-type]
    with pytest.raises(TensorRTError, match="validity INVALID, diagnostics UNSUPPORTED_CC more;"):
        deserialize_or_refuse(rtx, Explaining(), b"x", "GPU")
    assert "\n" not in refusal_message(rtx, "GPU", "a\nb")


def test_import_prefers_full_tensorrt_when_new_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt >= 10.15 wins; an older one falls back to tensorrt_rtx; none is a clear error."""
    mods: dict[str, Any] = {"tensorrt": SimpleNamespace(__version__="10.8.0"),
                            "tensorrt_rtx": SimpleNamespace(__version__="1.7.1")}

    def fake_import(name: str) -> Any:
        if name not in mods:
            raise ImportError(f"No module named {name!r}")
        return mods[name]

    monkeypatch.setattr(trt_build.importlib, "import_module", fake_import)
    assert trt_build.import_tensorrt().flavor == "tensorrt_rtx"
    mods["tensorrt"] = SimpleNamespace(__version__="10.15.1")
    assert trt_build.import_tensorrt().flavor == "tensorrt"
    mods.clear()
    with pytest.raises(TensorRTError, match="--backend onnxruntime"):
        trt_build.import_tensorrt()
