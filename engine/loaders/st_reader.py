"""Reads a .safetensors file into numpy with the `safetensors` library; floating tensors come
back as float32. bfloat16 tensors load because ml_dtypes, imported first, registers numpy's
`bfloat16` dtype (safetensors' numpy API alone cannot read them: "data type 'bfloat16' not
understood")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from engine.config import ModelError


def _widen(array: np.ndarray) -> np.ndarray:
    """Floating tensors (bf16/f16/f64 too) as float32; other kinds unchanged."""
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return np.asarray(array)


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one file; floating tensors widened to float32."""
    import ml_dtypes  # noqa: F401  (registers np.dtype("bfloat16"); imported here: ~0.6 s)

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            return {name: _widen(f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, TypeError, ValueError) as exc:
        raise ModelError(f"corrupt safetensors file {path}: {exc}") from None
