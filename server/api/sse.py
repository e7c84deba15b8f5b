"""SSE event bytes for the per-token path: orjson, with the json module as fallback.

orjson encodes a delta event several times faster than `json.dumps`. What it refuses (lone
surrogates, integers over 64 bits) goes through the standard encoder. Differences in what
orjson writes: a float may be spelled differently (-0.000012 for -1.2e-05, the same number),
and a non-finite float is written `null` (json.dumps writes `NaN`/`-Infinity`, which is not
JSON); the routes' floats are log-probs of chosen tokens, finite.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_SORTED = orjson.OPT_SORT_KEYS


def dumps_fast(obj: Any, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON, as json.dumps(separators=(",", ":"), ensure_ascii=False)."""
    try:
        return orjson.dumps(obj, option=_SORTED if sort_keys else 0)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "surrogatepass")


def encode_event(obj: Any, sort_keys: bool = False) -> bytes:
    """One `data:` event."""
    return b"data: " + dumps_fast(obj, sort_keys) + b"\n\n"
