"""Weight loaders: every format ends as (ModelConfig, {HF name: float32 array})."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.config import ModelConfig, ModelError
from engine.loaders.gguf import load_gguf
from engine.loaders.hf import load_hf

__all__ = ["load_gguf", "load_hf", "load_weights", "source_kind"]


def source_kind(path: str | Path) -> str:
    """"gguf" for a .gguf file, "hf" for a directory with config.json; else ModelError."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is a directory without config.json (not a Hugging Face model)")
        return "hf"
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path}: expected a .gguf file or a Hugging Face model directory")
        return "gguf"
    raise ModelError(f"model not found: {path}")


def load_weights(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Config and float32 HF-named weights of a .gguf file or a Hugging Face directory."""
    if source_kind(path) == "gguf":
        return load_gguf(path)
    return load_hf(path)
