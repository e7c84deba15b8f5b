"""The tokenizer the benchmark builds prompts with and counts streamed tokens with.

Preferred source: the engine package (`engine.tokenizer`), which reads the embedded model's
tokenizer without building the ONNX graph. Fallback: a Hugging Face `tokenizer.json` (a file,
or a directory holding one) through the `tokenizers` library.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class BenchTokenizer(Protocol):
    """The subset of `engine.tokenizer.Tokenizer` the benchmark uses."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...


class HFTokenizer:
    """Adapter from `tokenizers.Tokenizer` to `BenchTokenizer`."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))


def load_tokenizer(name: str) -> BenchTokenizer:
    """Load by engine model name / .gguf / HF directory, or from a tokenizer.json."""
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        return HFTokenizer.from_file(path)
    if path.is_dir() and (path / "tokenizer.json").is_file() and not _engine_available():
        return HFTokenizer.from_file(path / "tokenizer.json")
    engine_tok = _load_from_engine(name)
    if engine_tok is not None:
        return engine_tok
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer.from_file(path / "tokenizer.json")
    raise ValueError(
        f"cannot load a tokenizer for {name!r}: give --tokenizer a tokenizer.json, a Hugging Face "
        "directory, or a model the engine package knows")


def _engine_available() -> bool:
    try:
        importlib.import_module("engine.tokenizer")
    except ImportError:
        return False
    return True


def _load_from_engine(name: str) -> BenchTokenizer | None:
    """Use the engine's public tokenizer loader, whichever name it has."""
    try:
        module = importlib.import_module("engine.tokenizer")
    except ImportError as exc:
        logger.debug("engine.tokenizer not importable: %s", exc)
        return None
    for fn_name in ("load_tokenizer", "tokenizer_for_model", "load"):
        fn = getattr(module, fn_name, None)
        if callable(fn):
            logger.info("loading tokenizer %s via engine.tokenizer.%s", name, fn_name)
            return fn(name)  # type: ignore[no-any-return]
    logger.debug("engine.tokenizer has no loader function")
    return None
