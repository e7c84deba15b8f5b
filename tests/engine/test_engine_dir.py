"""`trtserve build` output directories: the build itself (TensorRT for RTX on this CPU, and
onnxruntime), config.json, and the one-line refusals `serve --engine-dir` makes before loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_hf import random_weights, write_config, write_safetensors, write_tiny_tokenizer

from engine.config import ModelConfig
from engine.engine_build import BuildOptions
from engine.engine_dir import (
    BuildConfig,
    EngineDirError,
    TensorRTTarget,
    adopt_limits,
    check_backend_dtype,
    check_runtime,
    read_config,
)
from engine.engine_dir import (
    write_config as write_build_config,
)
from engine.engine_dir_here import Machine, check_engine_dir
from engine.runtime import EngineOptions, load_model
from server.cli.main import main

# large enough for TensorRT's fused attention (head_dim 16); vocab = the tiny tokenizer's
SMALL = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, vocab_size=32, tie_word_embeddings=False)
RTX = TensorRTTarget("tensorrt_rtx", "1.7.1.116", ("sm86", "sm89"))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("small-llama")
    write_config(model_dir, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128)
    write_safetensors(model_dir / "model.safetensors", random_weights(SMALL, seed=5))
    write_tiny_tokenizer(model_dir)
    return model_dir


def config(**overrides: object) -> BuildConfig:
    base = {"model": "m", "name": "m", "backend": "tensorrt", "dtype": "float16",
            "max_batch_size": 8, "max_num_tokens": 256, "max_model_len": 128, "block_size": 16,
            "max_kv_blocks": 64, "builder_version": "x", "tensorrt": RTX}
    return BuildConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_cli_builds_a_tensorrt_engine_without_a_gpu(small_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`trtserve build --backend tensorrt --dtype float16 --max-batch-size 8` on this CPU-only
    machine writes rank0.engine and config.json (TensorRT for RTX builds without a GPU)."""
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "engine"
    code = main(["build", "--model", str(small_dir), "--backend", "tensorrt", "--dtype",
                 "float16", "--max-batch-size", "8", "--max-num-tokens", "64",
                 "--max-model-len", "96", "--gpu-arch", "sm86", "--output-dir", str(out)])
    assert code == 0
    assert (out / "rank0.engine").stat().st_size > 10_000
    built = read_config(out)
    assert (built.backend, built.dtype, built.max_batch_size) == ("tensorrt", "float16", 8)
    assert (built.max_num_tokens, built.max_model_len, built.max_kv_blocks) == (64, 96, 48)
    assert built.tensorrt and built.tensorrt.flavor == "tensorrt_rtx"
    assert built.tensorrt.gpu_archs == ("sm86",)
    assert (out / "tokenizer.json").is_file() and (out / "model.onnx").is_file()
    assert capsys.readouterr().out.startswith(f"built {small_dir.name} for tensorrt")


def test_onnxruntime_build_is_served_without_rebuild(small_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model(engine_dir=...) runs the directory as built: nothing is built, the cache stays
    empty, and the build's max_model_len becomes the context limit."""
    out = tmp_path / "ort"
    assert main(["build", "--model", str(small_dir), "--backend", "onnxruntime",
                 "--max-model-len", "64", "--output-dir", str(out)]) == 0
    import engine.prepare as prepare

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a served engine directory")

    monkeypatch.setattr(prepare, "build_graph", no_build)
    monkeypatch.setattr(prepare, "build_entry", no_build)
    cache = tmp_path / "cache"
    model = load_model(EngineOptions(engine_dir=str(out), cache_dir=str(cache),
                                     kv_cache_blocks=8))
    try:
        assert model.name == small_dir.name and model.backend == "onnxruntime-cpu"
        assert model.executor.max_context == 64
    finally:
        model.close()
    assert not cache.exists()


def test_build_refuses_a_context_beyond_the_model(small_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", "--model", str(small_dir), "--backend", "onnxruntime",
                 "--max-model-len", "4096", "--output-dir", str(tmp_path / "x")])
    assert code == 1
    assert "--max-model-len 4096 exceeds the model's maximum context of 128" in \
        capsys.readouterr().err


def test_config_round_trips_and_bad_dirs_are_one_line(tmp_path: Path) -> None:
    write_build_config(tmp_path, config())
    assert read_config(tmp_path) == config()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineDirError, match="has no config.json"):
        read_config(tmp_path / "empty")
    (tmp_path / "config.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(EngineDirError, match="unreadable"):
        read_config(tmp_path)
    with pytest.raises(EngineDirError, match="is not a directory"):
        read_config(tmp_path / "missing")


def _refusal(machine: Machine, built: BuildConfig | None = None) -> str:
    with pytest.raises(EngineDirError) as info:
        check_runtime(built or config(), Path("/e"), trt_flavor=machine.trt_flavor,
                      trt_version=machine.trt_version, gpu=machine.gpu, cc=machine.cc,
                      supported_archs=machine.trt_archs)
    assert "\n" not in str(info.value)
    return str(info.value)


H200 = Machine("tensorrt_rtx", "1.7.1.116", ("sm75", "sm80", "sm86", "sm89", "sm120"),
               "NVIDIA H200", (9, 0))


def test_h200_refuses_a_tensorrt_for_rtx_engine_in_one_line() -> None:
    """TensorRT for RTX does not run sm_90: the reason names the engine, the GPU and what to do."""
    msg = _refusal(H200)
    assert msg.startswith("engine /e was built with TensorRT for RTX 1.7.1.116 for sm86,sm89")
    assert "this GPU (NVIDIA H200, sm90) is not one TensorRT for RTX 1.7.1.116 runs on" in msg
    assert msg.endswith("serve an onnxruntime build (trtserve build --backend onnxruntime) "
                        "instead")


def test_other_gpu_other_version_no_gpu_no_tensorrt_are_refused() -> None:
    rtx_4090 = Machine("tensorrt_rtx", "1.7.1.116", None, "RTX 4090", (8, 9))
    assert _refusal(Machine("tensorrt_rtx", "1.7.1.116", None, "A100", (8, 0))).endswith(
        "not for this GPU (A100, sm80); rebuild it with trtserve build --gpu-arch sm80")
    assert "this machine has TensorRT for RTX 1.8.0" in _refusal(
        Machine("tensorrt_rtx", "1.8.0", None, "RTX 4090", (8, 9)))
    assert "this machine has TensorRT 10.15" in _refusal(
        Machine("tensorrt", "10.15", None, "RTX 4090", (8, 9)))
    assert "no NVIDIA GPU is usable here" in _refusal(Machine("tensorrt_rtx", "1.7.1.116"))
    assert "no TensorRT is installed here" in _refusal(Machine())
    check_runtime(config(), Path("/e"), trt_flavor=rtx_4090.trt_flavor,
                  trt_version=rtx_4090.trt_version, gpu=rtx_4090.gpu, cc=rtx_4090.cc)
    check_runtime(config(backend="onnxruntime", tensorrt=None), Path("/e"), trt_flavor=None,
                  trt_version=None, gpu=None, cc=None)


def test_check_engine_dir_refuses_before_loading(tmp_path: Path) -> None:
    """The whole check from the directory alone (no weights read)."""
    write_build_config(tmp_path, config())
    with pytest.raises(EngineDirError, match="sm90"):
        check_engine_dir(tmp_path, machine=H200)
    with pytest.raises(EngineDirError, match="--dtype float32 differs"):
        check_engine_dir(tmp_path, dtype="float32", machine=H200)


def test_limits_are_adopted_and_larger_flags_refused() -> None:
    built = config()
    assert adopt_limits(built, {}) == {"max_batch_size": 8, "max_num_tokens": 256,
                                       "max_model_len": 128}
    assert adopt_limits(built, {"max_batch_size": 4, "max_model_len": None})["max_batch_size"] == 4
    with pytest.raises(EngineDirError, match="--max-batch-size 16 exceeds the engine's "
                                             "max_batch_size of 8"):
        adopt_limits(built, {"max_batch_size": 16})
    with pytest.raises(EngineDirError, match="--max-model-len 4096 exceeds"):
        adopt_limits(built, {"max_model_len": 4096})
    with pytest.raises(EngineDirError, match="--backend onnxruntime differs"):
        check_backend_dtype(built, "onnxruntime", "auto")
    check_backend_dtype(built, "auto", "float16")


def test_graph_flags_are_recorded_adopted_and_refused(small_dir: Path, tmp_path: Path) -> None:
    """--cpu-precision and --block-size (non-default) go into config.json and the graph; serve
    --engine-dir adopts them when unset and refuses other values (and another --model) in one
    line before loading."""
    from engine.engine_dir_here import engine_dir_options
    from server.cli.preflight import adopt_engine_limits
    from server.settings import ServerSettings

    out = tmp_path / "fast"
    assert main(["build", "--model", str(small_dir), "--backend", "onnxruntime",
                 "--cpu-precision", "fast", "--block-size", "32", "--max-model-len", "64",
                 "--output-dir", str(out)]) == 0
    built = read_config(out)
    assert (built.cpu_precision, built.block_size) == ("fast", 32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["graph"]["cpu_precision"], manifest["block_size"]) == ("fast", 32)
    adopted, _ = engine_dir_options(EngineOptions(engine_dir=str(out)))
    assert (adopted.cpu_precision, adopted.block_size) == ("fast", 32)
    settings = adopt_engine_limits(ServerSettings(engine_dir=str(out), cpu_precision="fast",
                                                  block_size=32, model=small_dir.name))
    assert settings.max_model_len == 64
    for flag, value, built_value in (("cpu_precision", "exact", "fast"), ("block_size", 16, 32),
                                     ("model", "other-model", str(small_dir))):
        with pytest.raises(EngineDirError) as info:
            adopt_engine_limits(ServerSettings(engine_dir=str(out), **{flag: value}))
        dashed = "--" + flag.replace("_", "-")
        assert str(info.value) == (f"{dashed} {value} differs from the engine's {flag} "
                                   f"{built_value} (built into it by trtserve build); drop "
                                   f"{dashed} or rebuild with it")


def test_build_refuses_an_unknown_cpu_precision(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--cpu-precision", "int4", "--output-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="cpu_precision"):
        BuildOptions(output_dir=str(tmp_path), cpu_precision="int4")


def test_missing_tensorrt_fails_before_the_graph_is_built(small_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """Without TensorRT, `build --backend tensorrt` says so at once: nothing is written."""
    import engine.executors.trt_build as trt_build
    from engine.executors.trt_build import TensorRTError

    def missing() -> None:
        raise TensorRTError("no usable TensorRT (tensorrt_rtx: No module named 'tensorrt_rtx')")

    monkeypatch.setattr(trt_build, "import_tensorrt", missing)
    out = tmp_path / "engine"
    assert main(["build", "--model", str(small_dir), "--backend", "tensorrt",
                 "--output-dir", str(out)]) == 1
    assert "no usable TensorRT" in capsys.readouterr().err
    assert not out.exists()
