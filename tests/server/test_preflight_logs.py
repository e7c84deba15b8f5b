"""Pre-load checks (ports, chat template), the stats line's arithmetic and the JSON formatter."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler.stats import SchedulerStats
from server.cli.log_format import JsonFormatter, UvicornOnce
from server.cli.preflight import PreflightError, bind_ports, read_chat_template
from server.settings import ServerSettings
from server.metrics.stats_log import StatsLogger


def test_busy_metrics_port_releases_the_main_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        settings = ServerSettings(port=0, metrics_port=taken)
        with pytest.raises(PreflightError, match=f"cannot listen on 127.0.0.1:{taken}"):
            bind_ports(settings)
    sockets = bind_ports(ServerSettings(port=0, metrics_port=0))
    assert len(sockets) == 1
    sockets[0].close()


def test_chat_template_file_is_checked(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="cannot read it"):
        read_chat_template(str(tmp_path / "missing.jinja"))
    (tmp_path / "empty.jinja").write_text(" \n")
    with pytest.raises(PreflightError, match="is empty"):
        read_chat_template(str(tmp_path / "empty.jinja"))
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    assert read_chat_template(str(tmp_path / "t.jinja")) == "{{ messages }}"


def _stats(**kw: int) -> SchedulerStats:
    base = SchedulerStats(step_id=1, num_running=3, num_waiting=2, num_context_requests=0,
                          num_generation_requests=3, num_scheduled_tokens=3, max_batch_size=8,
                          max_num_tokens=64, blocks_total=100, blocks_free=75, blocks_used=25,
                          blocks_cached=0, tokens_per_block=16, preemptions_total=0,
                          prefix_cache_queries_total=0, prefix_cache_hits_total=0,
                          requests_completed_total=0, step_time_s=0.01)
    return replace(base, **kw)


def test_stats_line_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    seen: list[SchedulerStats] = []
    log = StatsLogger(2.0, seen.append, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="trtserve.stats")
    for t in (0.5, 1.0, 1.5, 2.0):
        now[0] = t
        log(_stats())
    assert len(seen) == 4  # the metrics callback still sees every step
    (record,) = caplog.records
    assert record.getMessage() == ("stats: running=3 waiting=2 kv_cache=25.0% tok/s=6.0 "
                                   "(generated 6.0)")
    off = StatsLogger(0.0, clock=lambda: 100.0)
    off(_stats())
    assert len(caplog.records) == 1


def test_json_formatter_and_uvicorn_once() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    record.fields = {"request_id": "abc"}
    body = json.loads(JsonFormatter().format(record))
    assert body["msg"] == "hello w" and body["request_id"] == "abc" and body["level"] == "info"
    once = UvicornOnce()

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, (1,), None)

    assert once.filter(rec("Started server process [%d]"))
    assert not once.filter(rec("Started server process [%d]"))
    assert not once.filter(rec("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)"))
    assert once.filter(rec("something else"))
