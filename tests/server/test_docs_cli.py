"""The docs keep up with the code: every serve option and build flag is in docs/cli.md, every
doc the README links exists, and nothing cites a spec file that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

from server.cli.main import build_parser
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


def test_every_serve_option_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for name in ServerSettings.model_fields:
        assert f"`--{name.replace('_', '-')}`" in text, name
        assert f"`TRTSERVE_{name.upper()}`" in text, name


def test_every_build_flag_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser(only="build")
    sub = next(a for a in parser._actions if a.dest == "command")
    build = sub.choices["build"]  # type: ignore[attr-defined]
    flags = [s for a in build._actions for s in a.option_strings if s.startswith("--")
             and s != "--help"]
    assert len(flags) >= 9
    for flag in flags:
        assert f"`{flag}" in text, flag


def test_links_resolve_and_no_missing_spec_is_cited() -> None:
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", readme):
        assert (ROOT / link).exists(), link
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([a-z-]+\.md)\)", doc.read_text()):
            assert (ROOT / "docs" / link).exists(), (doc.name, link)
    sources = [*ROOT.glob("server/**/*.py"), *ROOT.glob("engine/**/*.py"),
               *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    assert not [p for p in sources if "TRITON_API" in p.read_text()]
    assert "pip install 'trtserve[" not in readme  # not published: install from the repository
