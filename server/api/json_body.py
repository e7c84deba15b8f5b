"""Read a request body as JSON whatever its Content-Type, with Triton's strictness and better codes.

- invalid UTF-8, malformed JSON, nesting deeper than MAX_DEPTH, an integer longer than Python's
  int-digits limit -> ValidationError (400): every decoding failure is a client error
- a key repeated in one object -> ValidationError "... already exists in request"
- lone surrogates in strings (e.g. "\\ud800") -> ValidationError naming the field
"""

from __future__ import annotations

import json
import sys
from typing import Any

from server.errors import ValidationError

MAX_DEPTH = 100  # Triton's JSON nesting limit


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _depth_ok(value: Any) -> bool:
    """Iterative depth check (no recursion, bounded work)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _quick_depth_guard(text: str) -> None:
    """Reject absurd nesting before json.loads recurses into it (cheap upper bound)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    in_str = False
    escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValidationError(f"JSON nesting deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def _reason(exc: ValueError) -> str:
    text = str(exc)
    if "integer string conversion" in text:
        return f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return text.split(";")[0]


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Body bytes -> top-level JSON object (an empty body is `{}`)."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"request body is not valid UTF-8 (byte {exc.start})") from None
    _quick_depth_guard(text)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        raise ValidationError(f"input '{dup.key}' already exists in request") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"failed to parse the request JSON buffer: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise ValidationError(f"JSON nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer over Python's int-digits limit (4300)
        raise ValidationError(f"failed to parse the request JSON buffer: {_reason(exc)}") from None
    if not _depth_ok(value):
        raise ValidationError(f"JSON nesting deeper than {MAX_DEPTH} levels")
    if not isinstance(value, dict):
        raise ValidationError("request body must be a JSON object")
    return value


def check_text(value: str, field: str) -> str:
    """Strings must be encodable as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"'{field}' contains invalid Unicode (lone surrogate)") from None
    return value

