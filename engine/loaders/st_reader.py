"""A numpy-only safetensors reader that also handles bfloat16 (numpy has no bf16 dtype)."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np

from engine.config import ModelError

logger = logging.getLogger(__name__)

# safetensors dtype -> numpy dtype of the stored bytes (BF16 is widened separately)
DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """The tensor table of a .safetensors file and the offset where its data starts."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER_BYTES:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"corrupt safetensors file {path}: {exc}") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def _tensor(data: np.memmap, name: str, info: dict, path: Path) -> np.ndarray:
    dtype = DTYPES.get(info.get("dtype", ""))
    if dtype is None:
        raise ModelError(f"tensor {name} in {path} has unsupported dtype {info.get('dtype')!r}")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if end > data.shape[0] or end - start != count * dtype.itemsize:
        raise ModelError(f"tensor {name} in {path} is truncated or malformed")
    raw = data[start:end].view(dtype).reshape(shape)
    if info["dtype"] == "BF16":
        return bf16_to_float32(raw)
    return raw.astype(np.float32) if dtype.kind == "f" else np.array(raw)


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one file; floating tensors widened to float32."""
    path = Path(path)
    header, offset = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
    return {name: _tensor(data, name, info, path) for name, info in header.items()}
