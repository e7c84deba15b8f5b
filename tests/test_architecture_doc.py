"""docs/architecture.md names every module of the product packages and no module that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "engine", "scheduler", "loadgen")
DOC = ROOT / "docs" / "architecture.md"


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
               for node in body)


def _modules() -> set[str]:
    """Every .py file of the packages; an __init__.py only when it holds more than a docstring."""
    return {str(path.relative_to(ROOT)) for package in PACKAGES
            for path in (ROOT / package).rglob("*.py")
            if path.name != "__init__.py" or _has_code(path)}


def test_every_module_is_named() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(m for m in _modules() if f"`{m}`" not in text)
    assert missing == [], "docs/architecture.md does not name these modules"


def test_no_module_named_that_is_gone() -> None:
    named = set(re.findall(r"`((?:%s)/[\w/]+\.py)`" % "|".join(PACKAGES),
                           DOC.read_text(encoding="utf-8")))
    assert sorted(named - _modules()) == []
