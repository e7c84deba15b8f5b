"""The shape of the product packages: files short enough to read, `server/` arranged by concern."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "engine", "scheduler", "loadgen")
MAX_LINES = 300
MAX_SERVER_TOP_MODULES = 10


def test_no_product_module_over_300_lines() -> None:
    long = {str(path.relative_to(ROOT)): n for package in PACKAGES
            for path in (ROOT / package).rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_server_top_level_is_small() -> None:
    top = sorted(path.name for path in (ROOT / "server").glob("*.py"))
    assert len(top) <= MAX_SERVER_TOP_MODULES, top


def test_server_subpackages_by_concern() -> None:
    subpackages = {path.parent.name for path in (ROOT / "server").glob("*/__init__.py")}
    assert {"api", "cli", "metrics", "request", "split"} <= subpackages
