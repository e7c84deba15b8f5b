"""`trtserve serve` runner: options from settings/env, and exit 1 when the engine dies."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fakes import MODEL, FakeEngine

from engine.options import EngineOptions
from server.cli.main import build_parser
from server.cli.serve import serve, settings_from_args
from server.model_loader import engine_options
from server.settings import ServerSettings


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_defaults_come_from_settings_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTSERVE_MAX_QUEUE_SIZE", "7")
    args = build_parser().parse_args(["serve", "--port", "9001", "--no-enable-prefix-caching",
                                      "--scheduler-policy", "guaranteed_no_evict"])
    s = settings_from_args(args)
    assert (s.port, s.max_queue_size, s.enable_prefix_caching) == (9001, 7, False)
    assert s.scheduler_policy == "guaranteed_no_evict"
    assert s.max_batch_size == ServerSettings.model_fields["max_batch_size"].default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--backend", "cuda"])


def test_engine_options_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine option the server offers reaches EngineOptions; unset ones keep its defaults."""
    monkeypatch.delenv("TRTSERVE_CACHE_DIR", raising=False)  # a setting now (--cache-dir)
    assert engine_options(ServerSettings()) == EngineOptions()
    monkeypatch.setenv("TRTSERVE_Q4_DECODE", "false")
    args = build_parser().parse_args(["serve", "--dtype", "float16", "--block-size", "32",
                                      "--kv-cache-blocks", "64", "--backend", "onnxruntime"])
    opts = engine_options(settings_from_args(args))
    assert (opts.dtype, opts.q4_decode, opts.block_size) == ("float16", False, 32)
    assert (opts.kv_cache_blocks, opts.backend) == (64, "onnxruntime")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--dtype", "int8"])


def test_engine_death_exits_nonzero() -> None:
    settings = ServerSettings(model=MODEL, host="127.0.0.1", port=_free_port(),
                              metrics_port=_free_port(), log_level="warning")
    engine = FakeEngine(step_s=0.01, fail_at_step=3)  # the device fails at the third step

    async def main() -> int:
        task = asyncio.create_task(serve(settings, engine))
        url = f"http://127.0.0.1:{settings.port}"
        async with httpx.AsyncClient(timeout=10) as c:
            for _ in range(200):
                try:
                    if (await c.get(url + "/v2/health/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.02)
            r = await c.post(url + "/v2/models/ensemble/generate_stream",
                             json={"text_input": "a", "max_tokens": 50, "stream": True})
            assert '{"error":"RuntimeError: fake device failure"}' in r.text
        t0 = time.monotonic()
        code = await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 10
        return code

    assert asyncio.run(main()) == 1


def test_cpu_threads_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """--cpu-threads and TRTSERVE_CPU_THREADS reach EngineOptions; 0 is refused."""
    assert ServerSettings().cpu_threads is EngineOptions().cpu_threads is None
    args = build_parser().parse_args(["serve", "--cpu-threads", "1"])
    assert engine_options(settings_from_args(args)).cpu_threads == 1
    monkeypatch.setenv("TRTSERVE_CPU_THREADS", "3")
    assert engine_options(ServerSettings()).cpu_threads == 3
    with pytest.raises(ValueError, match="cpu_threads"):
        ServerSettings(cpu_threads=0)


def test_cpu_precision_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """--cpu-precision and TRTSERVE_CPU_PRECISION reach EngineOptions; other values are refused."""
    assert ServerSettings().cpu_precision == EngineOptions().cpu_precision == "exact"
    args = build_parser().parse_args(["serve", "--cpu-precision", "fast"])
    assert engine_options(settings_from_args(args)).cpu_precision == "fast"
    monkeypatch.setenv("TRTSERVE_CPU_PRECISION", "fast")
    assert engine_options(ServerSettings()).cpu_precision == "fast"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--cpu-precision", "int4"])
