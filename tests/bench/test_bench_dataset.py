"""Prompts: random text of an exact token length, JSONL files."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from loadgen.config import BenchConfigError
from loadgen.dataset import build_prompts, random_prompts
from loadgen.tokenizer import BenchTokenizer, HFTokenizer


@pytest.mark.parametrize("length", [1, 2, 3, 17, 32, 200])
def test_random_prompts_have_exact_token_length(fake_tok: HFTokenizer, length: int) -> None:
    """Each prompt encodes (with the BOS the tokenizer adds) to exactly input_len tokens."""
    prompts = random_prompts(fake_tok, 10, length, 5, seed=3)
    for p in prompts:
        assert len(fake_tok.encode(p.prompt)) == length == p.input_len
        assert p.output_len == 5
    assert len({p.prompt for p in prompts}) > 1 or length == 1


def test_random_prompts_are_seeded(fake_tok: HFTokenizer) -> None:
    a = [p.prompt for p in random_prompts(fake_tok, 4, 20, 5, seed=1)]
    assert a == [p.prompt for p in random_prompts(fake_tok, 4, 20, 5, seed=1)]
    assert a != [p.prompt for p in random_prompts(fake_tok, 4, 20, 5, seed=2)]


def test_jsonl_dataset(fake_tok: HFTokenizer, tmp_path: Path) -> None:
    """Lines are used in order and cycled; output_len defaults to the CLI value."""
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "alpha bravo", "output_len": 3}, {"prompt": "the quick brown fox"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    prompts = build_prompts(fake_tok, str(path), 3, 99, 7, seed=0)
    assert [p.prompt for p in prompts] == ["alpha bravo", "the quick brown fox", "alpha bravo"]
    assert [p.output_len for p in prompts] == [3, 7, 3]
    assert prompts[0].input_len == len(fake_tok.encode("alpha bravo"))


def test_bad_jsonl_is_rejected(fake_tok: HFTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(BenchConfigError, match="prompt"):
        build_prompts(fake_tok, str(path), 1, 1, 1, seed=0)
    with pytest.raises(BenchConfigError, match="JSONL"):
        build_prompts(fake_tok, str(tmp_path / "missing.jsonl"), 1, 1, 1, seed=0)


@functools.cache
def _engine_tokenizer() -> BenchTokenizer:
    try:
        from engine.registry import read_tokenizer
        from loadgen.tokenizer import load_tokenizer

        return load_tokenizer("smollm2-135m-instruct", read_tokenizer)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        pytest.skip(f"embedded model tokenizer not available: {exc}")


@pytest.mark.parametrize("length", [1, 32, 512])
def test_exact_length_with_embedded_model_tokenizer(length: int) -> None:
    """The same guarantee with the real (SmolLM2) tokenizer from the engine package."""
    tok = _engine_tokenizer()
    for p in random_prompts(tok, 5, length, 4, seed=0):
        assert len(tok.encode(p.prompt)) == length
