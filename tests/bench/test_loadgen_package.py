"""The load generator is its own package: it reaches the server only over HTTP (no import of
server/, engine/ or scheduler/), reads tokenizer.json files itself and takes a reader for model
names from its caller; `trtserve bench` still runs it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from loadgen.tokenizer import HFTokenizer, load_tokenizer
from server.cli.main import build_parser

LOADGEN = Path(__file__).resolve().parents[2] / "loadgen"
PRODUCT = ("server", "engine", "scheduler")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_loadgen_imports_no_product_package() -> None:
    files = sorted(LOADGEN.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        bad = {n for n in _imports(path) if n.split(".")[0] in PRODUCT}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_tokenizer_from_a_directory_or_the_callers_reader(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(str(tmp_path)).encode("a") == [0]
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).vocab_size == 2
    with pytest.raises(ValueError, match="give --tokenizer a tokenizer.json"):
        load_tokenizer("some-model")
    reader = HFTokenizer.from_file(tmp_path / "tokenizer.json")
    assert load_tokenizer("some-model", lambda name: reader) is reader


def test_trtserve_bench_gets_the_engines_model_reader() -> None:
    args = build_parser(only="bench").parse_args(["bench", "--concurrency", "1"])
    assert args.model_tokenizer is not None
    assert args.run.__module__ == "loadgen.cmd"
