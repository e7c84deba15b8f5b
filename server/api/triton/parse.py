"""Triton generate body -> typed inputs, key by key; 400s name the field.
(docs/triton-generate.md §1.2)

Top-level keys and the keys of `parameters` are merged; an input given twice (also via an old
alias such as `min_length`/`min_tokens`) is a 400 "already exists". Keys that are not inputs are
Triton "request parameters": scalars are accepted and ignored, objects/arrays are a 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scheduler.validation import INT32_MAX, SEED_LIMIT
from server.errors import ValidationError
from server.api.json_body import check_text
from server.api.triton.schema import ALIASES, INPUTS_BY_NAME, TensorSpec

INT32_MIN = -INT32_MAX - 1
UINT64_MAX = SEED_LIMIT - 1  # the seed is Triton's only UINT64 input


@dataclass(slots=True)
class TritonInputs:
    """The inputs of one generate request after type/shape conversion (batch size 1)."""

    request_id: str | None = None  # the client's "id", echoed back
    values: dict[str, Any] = field(default_factory=dict)  # input name -> scalar or list[str]
    ignored_parameters: list[str] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def _leaves(value: Any, name: str) -> list[Any]:
    """Flatten a scalar or nested array (iteratively) into its leaf values."""
    if not isinstance(value, list):
        return [value]
    out: list[Any] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            raise ValidationError(f"input '{name}': objects are not allowed in a tensor value")
        else:
            out.append(item)
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _convert_element(spec: TensorSpec, value: Any) -> Any:
    name, dt = spec.name, spec.datatype
    if dt == "BYTES":
        if not isinstance(value, str):
            raise ValidationError(f"input '{name}' must be a string, got {_type_name(value)}")
        return check_text(value, name)
    if dt == "BOOL":
        if not isinstance(value, bool):
            raise ValidationError(f"input '{name}' must be a boolean, got {_type_name(value)}")
        return value
    if dt in ("INT32", "UINT64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"input '{name}' must be an integer, got {_type_name(value)}")
        lo, hi = (INT32_MIN, INT32_MAX) if dt == "INT32" else (0, UINT64_MAX)
        if not lo <= value <= hi:
            raise ValidationError(f"input '{name}' is out of range for {dt} [{lo}, {hi}]")
        return value
    if dt == "FP32":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"input '{name}' must be a number, got {_type_name(value)}")
        try:
            number = float(value)  # an int past the float range raises OverflowError
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValidationError(f"input '{name}' must be a finite number")
        return number
    raise ValidationError(f"receiving {dt} data via JSON is not supported (input '{name}')")


def _convert_input(spec: TensorSpec, value: Any) -> Any:
    leaves = _leaves(value, spec.name)
    elements = [_convert_element(spec, v) for v in leaves]
    if spec.shape[-1] == -1 and len(spec.shape) == 2:  # [-1,-1]: a list of words
        return elements
    if len(elements) != 1:
        raise ValidationError(
            f"input '{spec.name}' expects exactly 1 element, got {len(elements)} "
            "(request batches larger than 1 are not supported)")
    return elements[0]


def _add_key(out: TritonInputs, key: str, value: Any) -> None:
    check_text(key, "key")
    if key == "id":
        if not isinstance(value, str):
            raise ValidationError(f"'id' must be a string, got {_type_name(value)}")
        out.request_id = check_text(value, "id")
        return
    spec = INPUTS_BY_NAME.get(key)
    if spec is None:
        if isinstance(value, (dict, list)) or value is None:
            raise ValidationError(f"parameter '{key}' has invalid type. It should be either "
                                  "'int', 'bool', or 'string'.")
        out.ignored_parameters.append(key)
        return
    canonical = ALIASES.get(key, key)
    if canonical in out.values:
        raise ValidationError(f"input '{key}' already exists in request")
    out.values[canonical] = _convert_input(spec, value)


def parse_triton_body(body: dict[str, Any]) -> TritonInputs:
    """Key-by-key conversion of a parsed JSON body; checks required inputs."""
    out = TritonInputs()
    for key, value in body.items():
        if key == "parameters":
            if not isinstance(value, dict):
                raise ValidationError("Expected JSON object for keyword: 'parameters'")
            for pkey, pvalue in value.items():
                if pkey in ("parameters", "id") and pkey in body:
                    raise ValidationError(f"input '{pkey}' already exists in request")
                _add_key(out, pkey, pvalue)
            continue
        _add_key(out, key, value)
    missing = [n for n in ("text_input", "max_tokens") if n not in out.values]
    if missing:
        got = sorted(out.values)
        raise ValidationError(
            f"expected number of inputs between 2 and {len(INPUTS_BY_NAME)} but got "
            f"{len(got)} inputs for model 'ensemble'. Got input(s) {got}, but missing required "
            f"input(s) {missing}. Please provide all required input(s).")
    if out.values["text_input"] == "":
        raise ValidationError("input 'text_input' must not be empty")
    return out
