"""Backend selection: TensorRT first on a GPU, a refusing GPU executor falls back under `auto`,
and an explicit `--backend tensorrt` that cannot run is one clear ModelError."""

from __future__ import annotations

import pytest

import engine.backends as backends
import engine.prepare as prepare
import engine.runtime as rt
from engine.config import ModelConfig, ModelError


def _machine(monkeypatch: pytest.MonkeyPatch, *, gpu: str | None, trt: str | None,
             ort_cuda: bool) -> None:
    monkeypatch.setattr(backends, "_gpu_reason", lambda: gpu)
    monkeypatch.setattr(backends, "_tensorrt_reason", lambda: trt)
    monkeypatch.setattr(backends, "_ort_cuda_available", lambda: ort_cuda)


def _names(options: rt.EngineOptions) -> list[str]:
    return [b.name for b in backends.backend_candidates(options.backend)]


def test_cpu_machine_runs_onnxruntime_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu="no driver", trt=None, ort_cuda=True)
    assert _names(rt.EngineOptions()) == ["onnxruntime-cpu"]


def test_gpu_machine_prefers_tensorrt_then_ort_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=None, trt=None, ort_cuda=True)
    assert _names(rt.EngineOptions()) == ["tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]
    assert _names(rt.EngineOptions(backend="onnxruntime")) == ["onnxruntime-cuda",
                                                               "onnxruntime-cpu"]
    assert backends.select_backend(rt.EngineOptions()).dtype == "float16"


def test_explicit_tensorrt_without_gpu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu="no CUDA driver", trt=None, ort_cuda=False)
    with pytest.raises(ModelError, match=r"no CUDA driver.*--backend onnxruntime"):
        backends.backend_candidates("tensorrt")


def test_auto_falls_back_when_tensorrt_refuses_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=None, trt=None, ort_cuda=True)
    tried: list[str] = []

    def start(backend: backends.BackendChoice, options: rt.EngineOptions) -> object:
        tried.append(backend.name)
        if backend.name == "tensorrt":
            raise RuntimeError("TensorRT for RTX cannot run on this GPU (sm_90)")
        return type("Loaded", (), {"name": "m", "backend": backend.name,
                                   "executor": type("E", (), {"num_blocks": 4})()})()

    monkeypatch.setattr(rt, "_start", start)
    loaded = rt.load_model(rt.EngineOptions())
    assert tried == ["tensorrt", "onnxruntime-cuda"]
    assert loaded.backend == "onnxruntime-cuda"


@pytest.mark.parametrize(("flavor", "capability", "refused"), [
    ("tensorrt_rtx", (9, 0), True), ("tensorrt_rtx", (8, 9), False),
    ("tensorrt_rtx", (12, 0), False), ("tensorrt", (9, 0), False)])
def test_tensorrt_rtx_is_not_tried_on_sm90(monkeypatch: pytest.MonkeyPatch, flavor: str,
                                           capability: tuple[int, int], refused: bool) -> None:
    """TensorRT-RTX on an H100/H200 (sm_90) is skipped before any engine build: `auto` goes
    straight to ONNX Runtime CUDA and an explicit `tensorrt` names the reason; full TensorRT and
    RTX on the GPUs it supports stay first."""
    import engine.executors.trt_build as trt_build

    monkeypatch.setattr(trt_build, "import_tensorrt",
                        lambda: trt_build.TrtModule(type(trt_build)("fake_trt"), flavor))
    monkeypatch.setattr(backends, "_device_capability", lambda: capability)
    monkeypatch.setattr(backends, "_gpu_reason", lambda: None)
    monkeypatch.setattr(backends, "_ort_cuda_available", lambda: True)
    names = [b.name for b in backends.backend_candidates("auto")]
    assert names[0] == ("onnxruntime-cuda" if refused else "tensorrt")
    if refused:
        with pytest.raises(ModelError, match=r"compute capability 9\.0.*--backend onnxruntime"):
            backends.backend_candidates("tensorrt")
    else:
        assert [b.name for b in backends.backend_candidates("tensorrt")] == ["tensorrt"]


def test_explicit_tensorrt_refusal_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=None, trt=None, ort_cuda=True)

    def start(backend: backends.BackendChoice, options: rt.EngineOptions) -> object:
        raise RuntimeError("cannot run on this GPU; start the server with --backend onnxruntime")

    monkeypatch.setattr(rt, "_start", start)
    with pytest.raises(ModelError, match="tensorrt: cannot run on this GPU"):
        rt.load_model(rt.EngineOptions(backend="tensorrt"))


def test_builder_version_follows_the_graph_sources(tmp_path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    """A cached graph is keyed on the builder's code (its dtype table, graph/ and the loaders
    too), not only on BUILDER_VERSION."""
    for folder in ("graph", "loaders"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "part.py").write_text("X = 1\n")
    (tmp_path / "dtypes.py").write_text("X = 1\n")
    (tmp_path / "builder.py").write_text("BUILDER_VERSION = '7'\n")
    files = tuple(tmp_path / f for f in ("builder.py", "dtypes.py", "graph/part.py",
                                        "loaders/part.py"))
    monkeypatch.setattr(prepare, "builder_source",
                        lambda: prepare.BuilderSource("7", tmp_path, files))
    versions = []
    for edit in (None, "graph/part.py", "loaders/part.py", "dtypes.py"):
        if edit is not None:
            (tmp_path / edit).write_text(f"X = '{edit}'\n")
        prepare.builder_version.cache_clear()
        versions.append(prepare.builder_version())
    prepare.builder_version.cache_clear()
    assert all(v.startswith("7-") for v in versions) and len(set(versions)) == 4


def test_builder_source_names_the_installed_builder() -> None:
    """The real BuilderSource: engine/builder.py's BUILDER_VERSION, the builder, its dtype
    table and every module of engine/graph/ and engine/loaders/."""
    import engine.builder as builder

    source = prepare.builder_source()
    names = {str(p.relative_to(source.root)) for p in source.files}
    assert source.version == builder.BUILDER_VERSION
    assert {"builder.py", "dtypes.py", "graph/attention.py", "loaders/gguf.py"} <= names
    assert prepare.builder_version().startswith(f"{builder.BUILDER_VERSION}-")


def test_pool_blocks_per_backend(tmp_path) -> None:
    """The pool's size in blocks: the options' count on every backend, capped for TensorRT by
    the pool an engine directory was built for (not for the other backends it may run on)."""
    from engine.engine_dir import BuildConfig, write_config
    from engine.kv_sizing import pool_blocks

    write_config(tmp_path, BuildConfig(model="m", name="m", backend="tensorrt", dtype="float16",
                                       max_batch_size=8, max_num_tokens=256, max_model_len=128,
                                       block_size=16, max_kv_blocks=64, builder_version="x"))
    config = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         intermediate_size=128, vocab_size=32)
    options = rt.EngineOptions(kv_cache_blocks=500, engine_dir=str(tmp_path))
    got = {b.name: pool_blocks(b, options, config, 128, "float16")
           for b in (backends.TENSORRT, backends.ORT_CUDA, backends.ORT_CPU)}
    assert got == {"tensorrt": 64, "onnxruntime-cuda": 500, "onnxruntime-cpu": 500}
    no_dir = rt.EngineOptions(kv_cache_blocks=500)
    assert pool_blocks(backends.TENSORRT, no_dir, config, 128, "float16") == 500
