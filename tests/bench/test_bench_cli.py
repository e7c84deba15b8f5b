"""`trtserve bench` through the CLI dispatcher: console table, JSON file, PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from server.cli import main

from .fake_server import FakeServer


def _write_tokenizer(fake_tok: object, tmp_path: Path) -> str:
    path = tmp_path / "tokenizer.json"
    fake_tok._tok.save(str(path))  # type: ignore[attr-defined]
    return str(path)


def test_cli_writes_table_json_and_plot(server: FakeServer, fake_tok: object, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["bench", "--url", server.url, "--model", "flaky", "--concurrency", "1,2",
               "--num-prompts", "8", "--input-len", "10", "--output-len", "5",
               "--tokenizer", _write_tokenizer(fake_tok, tmp_path), "--slo-ttft-ms", "1000",
               "--output-json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "| concurrency |" in captured.out and "TTFT" in captured.out
    assert "dropped=2, error_event=2, http_503=2" in captured.out
    assert "8/8 failed=6" in captured.err  # the progress bar, on stderr
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"date", "machine", "config", "runs"}
    assert doc["config"]["concurrency"] == [1, 2] and doc["machine"]["cpu_count"] >= 1
    assert [r["completed"] for r in doc["runs"]] == [2, 2]
    assert doc["runs"][0]["errors"] == {"dropped": 2, "error_event": 2, "http_503": 2}
    assert doc["runs"][0]["goodput"] is not None
    with Image.open(out_png) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--concurrency", "1", "--request-rate", "2"])
    assert main(["bench", "--concurrency", "0", "--tokenizer", "x.json"]) == 2
    assert "concurrency" in capsys.readouterr().err


def test_cli_exit_1_when_everything_failed(server: FakeServer, fake_tok: object,
                                          tmp_path: Path) -> None:
    rc = main(["bench", "--url", server.url, "--model", "http503", "--concurrency", "2",
               "--num-prompts", "2", "--input-len", "4", "--output-len", "2", "--no-progress",
               "--tokenizer", _write_tokenizer(fake_tok, tmp_path)])
    assert rc == 1
