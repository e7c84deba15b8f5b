"""The graph / KV-pool element types by name, as numpy dtypes (bfloat16 through ml_dtypes, which
numpy itself lacks). One table for the builder, the runtime and the device pool.

`DTYPE_NAMES` needs no import; `NUMPY_DTYPES` imports numpy and ml_dtypes on first use (ml_dtypes
alone takes ~0.6 s, which `trtserve serve --help` need not pay).

It also names the CPU single-token precisions (engine/graph/quant.py says what each computes)."""

from __future__ import annotations

from typing import Any

DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}  # element sizes


def _numpy_dtypes() -> dict[str, Any]:
    import ml_dtypes
    import numpy as np

    return {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
            "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def __getattr__(name: str) -> Any:
    if name == "NUMPY_DTYPES":
        table = _numpy_dtypes()
        globals()[name] = table
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

EXACT, FAST = "exact", "fast"  # MatMulNBits activations: float32 | int8 per block of 32
CPU_PRECISIONS = (EXACT, FAST)
