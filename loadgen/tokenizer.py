"""The tokenizer the benchmark builds prompts with and counts streamed tokens with.

A Hugging Face `tokenizer.json` (a file, or a directory holding one) through the `tokenizers`
library. The load generator talks to the server only over HTTP; for model names and .gguf files
the caller passes a reader (`trtserve bench` passes the engine's, engine.registry.read_tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol


class BenchTokenizer(Protocol):
    """What the benchmark needs of a tokenizer (engine.tokenizer.Tokenizer has it too)."""

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


ModelTokenizer = Callable[[str], BenchTokenizer]  # a model name -> its tokenizer


def load_tokenizer(name: str, model_tokenizer: ModelTokenizer | None = None) -> BenchTokenizer:
    """A tokenizer.json, a directory holding one (a Hugging Face model, a `trtserve build`
    output), else whatever `model_tokenizer` makes of the name (`trtserve bench` passes the
    engine's reader of registry names and .gguf files)."""
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        return HFTokenizer.from_file(path)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer.from_file(path / "tokenizer.json")
    if model_tokenizer is not None:
        return model_tokenizer(name)
    raise ValueError(
        f"cannot load a tokenizer for {name!r}: give --tokenizer a tokenizer.json or a directory "
        "holding one (a Hugging Face model, a trtserve build output)")
