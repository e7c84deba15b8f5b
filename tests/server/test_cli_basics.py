"""`trtserve --version`, and a `--help` that imports no heavy module (lazy subcommands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys
import server.cli.main as cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
heavy = [m for m in ("server.app", "engine.runtime", "uvicorn", "fastapi", "numpy",
                     "ml_dtypes", "onnx", "onnxruntime", "tokenizers") if m in sys.modules]
print("HEAVY", heavy)
"""


def _probe(argv: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    out = _probe(["--version"])
    assert f"trtserve {version('trtserve')}" in out
    assert "HEAVY []" in out


def test_top_level_help_imports_nothing_heavy() -> None:
    """`trtserve --help` lists every subcommand without importing them (it took 3 s before)."""
    out = _probe(["--help"])
    for name in ("serve", "build", "prepare", "generate", "bench"):
        assert f"    {name} " in out
    assert "HEAVY []" in out


def test_subcommand_help_imports_only_its_module() -> None:
    """`trtserve build --help` imports neither the server app nor onnx/onnxruntime;
    `serve --help` does not import ml_dtypes, onnx or onnxruntime."""
    out = _probe(["build", "--help"])
    assert "--max-model-len" in out and "--output-dir" in out
    heavy = out.split("HEAVY")[1]
    assert all(m not in heavy for m in ("server.app", "engine.runtime", "uvicorn", "'onnx"))
    heavy = _probe(["serve", "--help"]).split("HEAVY")[1]
    assert all(m not in heavy for m in ("ml_dtypes", "'onnx", "onnxruntime"))
