"""`trtserve bench` through the CLI dispatcher: console table, JSON file, PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from server.cli.main import main

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
    assert "8/8, failed=6" in captured.err  # the progress bar (tqdm), on stderr
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


def test_missing_matplotlib_is_reported_before_the_run(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--plot without matplotlib: exit 2 at once, no request sent (the URL is unreachable)."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    rc = main(["bench", "--url", "http://127.0.0.1:9", "--concurrency", "1", "--num-prompts",
               "1", "--tokenizer", str(tmp_path / "never-read.json"), "--plot",
               str(tmp_path / "p.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "make install" in err
    assert not (tmp_path / "p.png").exists()


def test_every_bench_flag_has_help() -> None:
    """`trtserve bench --help` explains each option."""
    from server.cli.main import build_parser

    parser = build_parser(only="bench")
    sub = next(a for a in parser._actions if a.dest == "command")
    bench = sub.choices["bench"]  # type: ignore[attr-defined]
    missing = [a.option_strings for a in bench._actions if a.option_strings and not a.help]
    assert not missing
