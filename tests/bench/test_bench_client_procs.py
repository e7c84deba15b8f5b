"""`trtserve bench --client-procs N`: one run spread over client processes.

The split is checked as pure functions; the whole path (spawned workers, start barrier, merged
records, report) against the fake streaming server, whose counters are the truth.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from loadgen import procs
from loadgen.config import BenchConfig, BenchConfigError
from loadgen.dataset import BenchPrompt
from loadgen.generator import poisson_schedule
from loadgen.procs import ClientProcsError
from loadgen.runner import run_benchmark
from loadgen.split import even_split, make_shares
from loadgen.tokenizer import HFTokenizer
from server.cli.main import main

from .fake_server import FakeServer
from .test_bench_cli import _write_tokenizer


def _prompts(n: int) -> list[BenchPrompt]:
    return [BenchPrompt(f"p{i}", 3, 4) for i in range(n)]


def _config(server: FakeServer, **kw: object) -> BenchConfig:
    base = BenchConfig(url=server.url, model="ok", concurrency=(4,), num_prompts=12,
                       input_len=12, output_len=6, progress=False, timeout_s=20.0,
                       client_procs=1)
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize(("n", "conc", "procs_"), [(512, 256, 8), (12, 5, 2), (7, 64, 3),
                                                   (10, 3, 3), (5, 1, 1)])
def test_closed_loop_shares_cover_each_prompt_once(n: int, conc: int, procs_: int) -> None:
    prompts = _prompts(n)
    shares = make_shares(prompts, "concurrency", conc, 0, procs_)
    indices = [i for s in shares for i in s.indices]
    assert sorted(indices) == list(range(n))
    assert all(s.prompts == tuple(prompts[i] for i in s.indices) for s in shares)
    streams = [s.concurrency for s in shares]
    assert sum(streams) == min(conc, n) and max(streams) - min(streams) <= 1
    # prompts in proportion to streams: within one round of the slots
    for s in shares:
        assert abs(len(s.indices) - n * s.concurrency / min(conc, n)) <= s.concurrency


def test_open_loop_shares_keep_the_one_process_schedule() -> None:
    prompts = _prompts(11)
    shares = make_shares(prompts, "request_rate", 40.0, 3, 3)
    schedule = poisson_schedule(11, 40.0, 3)
    assert sorted(i for s in shares for i in s.indices) == list(range(11))
    for s in shares:
        assert s.concurrency == 0
        assert list(s.send_at) == [schedule[i] for i in s.indices]


def test_even_split() -> None:
    assert even_split(256, 8) == [32] * 8
    assert even_split(10, 4) == [3, 3, 2, 2]


def test_procs_for_never_exceeds_streams_or_prompts() -> None:
    cfg = BenchConfig(concurrency=(1, 64, 256), num_prompts=100, client_procs=4)
    assert [cfg.procs_for(v) for v in cfg.sweep] == [1, 4, 4]
    auto = dataclasses.replace(cfg, client_procs="auto")
    cores = os.cpu_count() or 1
    assert [auto.procs_for(v) for v in auto.sweep] == [1, min(cores, 3), min(cores, 9)]
    with pytest.raises(BenchConfigError, match="client-procs"):
        BenchConfig(concurrency=(1,), client_procs=0)
    with pytest.raises(BenchConfigError, match="client-procs"):
        BenchConfig(concurrency=(1,), client_procs="many")


@pytest.mark.parametrize("mode", ["concurrency", "request_rate"])
def test_two_procs_send_the_same_run_as_one(server: FakeServer, fake_tok: HFTokenizer,
                                            mode: str) -> None:
    """Same requests (each prompt exactly once, the same prompts as one process), same
    output tokens, every record merged; the streams stay within the concurrency."""
    load = {"concurrency": (4,)} if mode == "concurrency" else {
        "concurrency": (), "request_rate": (200.0,)}
    runs = {}
    sent = {}
    for n in (1, 2):
        server.reset()
        (runs[n],) = run_benchmark(_config(server, client_procs=n, **load), fake_tok)
        sent[n] = Counter(p["text_input"] for p in server.payloads)
        if mode == "concurrency":
            assert server.max_in_flight <= 4
    assert sent[2] == sent[1] and set(sent[2].values()) == {1} and len(sent[2]) == 12
    one, two = runs[1], runs[2]
    assert (two.num_requests, two.completed, two.failed) == (12, 12, 0)
    assert two.total_output_tokens == one.total_output_tokens == 12 * 6
    assert two.total_input_tokens == one.total_input_tokens
    assert two.ttft_ms.count == 12 and two.itl_ms.count == 12 * 5
    assert 0 < two.duration_s < 20 and two.output_throughput > 0


def test_errors_from_every_process_are_reported(server: FakeServer,
                                                fake_tok: HFTokenizer) -> None:
    (run,) = run_benchmark(_config(server, model="flaky", num_prompts=8, client_procs=2),
                           fake_tok)
    assert run.num_requests == 8 and run.completed == 2
    assert sum(run.errors.values()) == 6 and set(run.errors) == {"dropped", "error_event",
                                                                "http_503"}


def _signal_a_worker(sig: int, after_s: float) -> threading.Thread:
    def go() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = multiprocessing.active_children()
            if len(children) == 2:
                time.sleep(after_s)
                os.kill(children[0].pid or 0, sig)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("sig", "message"), [(signal.SIGKILL, "exited"),
                                              (signal.SIGSTOP, "hung")])
def test_a_dead_or_hung_worker_fails_the_run(server: FakeServer, fake_tok: HFTokenizer,
                                             monkeypatch: pytest.MonkeyPatch, sig: int,
                                             message: str) -> None:
    """Killed (SIGKILL) or frozen (SIGSTOP) mid-run: a clear error within the limits, and no
    client process left behind."""
    monkeypatch.setattr(procs, "SILENCE_S", 3.0)
    thread = _signal_a_worker(sig, after_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(ClientProcsError, match=rf"client process \d \(pid \d+\).*{message}"):
        run_benchmark(_config(server, model="slow", num_prompts=4, client_procs=2), fake_tok)
    assert time.monotonic() - t0 < 30
    thread.join(5)
    assert multiprocessing.active_children() == []


def test_cli_flag_and_env_var(server: FakeServer, fake_tok: object, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """--client-procs 2 and TRTSERVE_BENCH_CLIENT_PROCS=3 reach the run (and its JSON);
    a bad value is refused."""
    caplog.set_level(logging.INFO, logger="loadgen.runner")
    tok = _write_tokenizer(fake_tok, tmp_path)
    args = ["bench", "--url", server.url, "--model", "ok", "--concurrency", "4",
            "--num-prompts", "8", "--input-len", "10", "--output-len", "5", "--tokenizer", tok,
            "--no-progress", "--output-json", str(tmp_path / "r.json")]
    for extra, env, want in ([["--client-procs", "2"], None, 2], [[], "3", 3]):
        if env is not None:
            monkeypatch.setenv("TRTSERVE_BENCH_CLIENT_PROCS", env)
        server.reset()
        assert main(args + extra) == 0
        doc = json.loads((tmp_path / "r.json").read_text())
        assert doc["config"]["client_procs"] == want
        assert doc["runs"][0]["completed"] == 8 and server.completed == 8
        assert f"{want} client processes" in caplog.text
        caplog.clear()
    with pytest.raises(SystemExit):
        main(args + ["--client-procs", "0"])
    assert "client-procs" in capsys.readouterr().err


def test_cli_reports_a_failed_client_process(fake_tok: object, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI turns ClientProcsError into exit code 1 and one error line, no tables."""
    from loadgen import cmd

    def boom(*args: object, **kwargs: object) -> None:
        raise ClientProcsError("client process 1 (pid 42) exited (code -9) before reporting")

    monkeypatch.setattr(cmd, "run_benchmark", boom)
    rc = main(["bench", "--concurrency", "64", "--tokenizer", _write_tokenizer(fake_tok, tmp_path),
               "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == ""
    assert "trtserve bench: error: client process 1 (pid 42) exited" in captured.err
