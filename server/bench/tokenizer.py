"""The tokenizer the benchmark builds prompts with and counts streamed tokens with.

Preferred source: the engine package (`engine.tokenizer`), which reads the embedded model's
tokenizer without building the ONNX graph. Fallback: a Hugging Face `tokenizer.json` (a file,
or a directory holding one) through the `tokenizers` library.
"""

from __future__ import annotations

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
    try:
        return _load_from_engine(name)
    except ImportError as exc:
        logger.debug("engine package not usable for the tokenizer: %s", exc)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer.from_file(path / "tokenizer.json")
    raise ValueError(
        f"cannot load a tokenizer for {name!r}: give --tokenizer a tokenizer.json, a Hugging Face "
        "directory, or a model the engine package knows")


def _load_from_engine(name: str) -> BenchTokenizer:
    """Only the tokenizer, through the engine's public loaders (no weights, no graph build)."""
    from engine.registry import resolve_model
    from engine.tokenizer import Tokenizer

    source = resolve_model(name)
    logger.info("tokenizer of %s (%s, %s)", source.name, source.kind, source.path)
    if source.kind == "gguf":
        from engine.loaders.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(source.path)
    return Tokenizer.from_dir(source.path)
