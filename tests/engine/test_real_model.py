"""The embedded SmolLM2 end to end: GGUF -> cached ONNX graph -> onnxruntime, greedy tokens equal
to Hugging Face transformers (fp32) token for token (references: record_hf_reference.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.generate import greedy_generate
from engine.prepare import prepare_model
from engine.runtime import EngineOptions, LoadedModel, load_model
from server.cli.main import main as cli_main

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "smollm2_greedy.json").read_text(encoding="utf-8"))
CASES = REFERENCE["cases"]


@pytest.fixture(scope="session")
def cache_dir(smollm2_cache: Path) -> Path:
    return smollm2_cache


@pytest.fixture(scope="session")
def smollm2(cache_dir: Path) -> Iterator[LoadedModel]:
    model = load_model(EngineOptions(cache_dir=str(cache_dir), kv_cache_blocks=16))
    yield model
    model.close()


def test_reference_file_is_sound() -> None:
    """At least 6 prompts x 32 tokens, each token's top-2 margin above the recorded bound."""
    assert len(CASES) >= 6
    for case in CASES:
        assert len(case["output_ids"]) == REFERENCE["new_tokens"] == 32
        assert min(case["margins"]) > REFERENCE["min_margin"] == 0.05


@pytest.mark.parametrize("case", CASES, ids=[c["prompt"][:24] for c in CASES])
def test_greedy_matches_transformers(smollm2: LoadedModel, case: dict) -> None:
    """Greedy output of our graph on onnxruntime equals transformers' token for token."""
    out = list(greedy_generate(smollm2.executor, case["prompt_ids"], len(case["output_ids"])))
    assert out == case["output_ids"]


def test_loaded_model_fields(smollm2: LoadedModel) -> None:
    assert smollm2.name == "smollm2-135m-instruct"
    assert smollm2.backend == "onnxruntime-cpu"
    assert (smollm2.config.num_layers, smollm2.config.vocab_size) == (30, 49152)
    assert smollm2.executor.num_blocks == 16
    assert smollm2.executor.max_context == 8192
    assert smollm2.tokenizer.eos_token_ids == (2,)


def test_chat_prompt_tokenizes_like_reference(smollm2: LoadedModel) -> None:
    """The cached tokenizer renders the chat template to the ids transformers produced."""
    case = next(c for c in CASES if c["prompt"] == "What is the capital of France?")
    ids = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": case["prompt"]}])
    assert ids == case["prompt_ids"]


def test_eos_stops_generation(smollm2: LoadedModel) -> None:
    """With eos ids given, the loop yields the eos token and stops."""
    case = next(c for c in CASES if c["prompt"] == "What is the capital of France?")
    out = list(greedy_generate(smollm2.executor, case["prompt_ids"], 32, eos_ids=(2,)))
    assert out == case["output_ids"][: case["output_ids"].index(2) + 1]
    assert smollm2.tokenizer.decode(out) == "The capital of France is Paris."


def test_cache_is_reused(smollm2: LoadedModel, cache_dir: Path) -> None:
    """A second prepare finds the entry: same directory, manifest untouched, no rebuild."""
    entry = prepare_model(EngineOptions(cache_dir=str(cache_dir)))
    manifest = json.loads((entry / "manifest.json").read_text())
    before = (entry / "manifest.json").stat().st_mtime_ns
    start = time.monotonic()
    assert prepare_model(EngineOptions(cache_dir=str(cache_dir))) == entry
    assert time.monotonic() - start < 5.0
    assert (entry / "manifest.json").stat().st_mtime_ns == before
    assert manifest["dtype"] == "float32" and manifest["block_size"] == 16
    assert manifest["graph"]["input_names"][0] == "input_ids"
    assert sorted(p.name for p in entry.iterdir()) == [
        "manifest.json", "model.onnx", "model.onnx.data", "model_q4.onnx", "model_q4.onnx.data",
        "tokenizer.json", "tokenizer_config.json"]
    assert manifest["graph"]["q4_model_file"] == "model_q4.onnx"
    assert [p.name for p in (cache_dir / "models").iterdir() if p.name.startswith(".tmp")] == []


def test_cli_generate_chat(smollm2: LoadedModel, cache_dir: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """`trtserve generate --chat` prints the greedy answer and stops at eos."""
    code = cli_main(["generate", "--chat", "--prompt", "What is the capital of France?",
                     "--max-tokens", "32", "--cache-dir", str(cache_dir)])
    assert code == 0
    assert capsys.readouterr().out == "The capital of France is Paris.\n"
