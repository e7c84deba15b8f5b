"""The graph / KV-pool element types by name, as numpy dtypes (bfloat16 through ml_dtypes, which
numpy itself lacks). One table for the builder, the runtime and the device pool; and the names
of the CPU single-token precisions (engine/graph/quant.py says what each computes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

EXACT, FAST = "exact", "fast"  # MatMulNBits activations: float32 | int8 per block of 32
CPU_PRECISIONS = (EXACT, FAST)
