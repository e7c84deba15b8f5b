"""SSE event bytes for the per-token path: orjson, with the json module's output as fallback.

orjson encodes a delta event ~5-10x faster than `json.dumps`. For what it refuses (lone
surrogates, integers over 64 bits) or writes differently (NaN/inf become null) the standard
encoder is used, so every value encodes as the routes' non-streaming JSON does.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import orjson

logger = logging.getLogger(__name__)

_SORTED = orjson.OPT_SORT_KEYS


def _has_non_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_non_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_non_finite(v) for v in obj)
    return False


def dumps_fast(obj: Any, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON equal in value to json.dumps(separators=(",", ":"),
    ensure_ascii=False, sort_keys=sort_keys) (only float spelling may differ: 1.2e-05 is
    written -0.000012)."""
    try:
        if not _has_non_finite(obj):
            return orjson.dumps(obj, option=_SORTED if sort_keys else 0)
    except (TypeError, orjson.JSONEncodeError):
        pass
    return json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8", "surrogatepass")


def encode_event(obj: Any, sort_keys: bool = False) -> bytes:
    """One `data:` event."""
    return b"data: " + dumps_fast(obj, sort_keys) + b"\n\n"
