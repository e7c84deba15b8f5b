"""16 streams whose clients drop after the first event are aborted and leak no KV blocks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from server_proc import ServerProc

pytestmark = pytest.mark.e2e


async def _drop_after_first_event(url: str) -> None:
    async with httpx.AsyncClient(timeout=120) as c:
        async with c.stream("POST", url, json={"text_input": "Tell me a very long story.",
                                               "max_tokens": 400, "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break


def _stats(server: ServerProc) -> dict:
    return httpx.get(server.url + "/v2/trtserve/stats", timeout=10).json()


def test_sixteen_dropped_streams_abort_and_free_blocks(server: ServerProc) -> None:
    url = server.url + "/v2/models/ensemble/generate_stream"

    async def main() -> None:
        await asyncio.gather(*(_drop_after_first_event(url) for _ in range(16)))

    t0 = time.monotonic()
    asyncio.run(main())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        s = _stats(server)
        sched = s["scheduler"]
        if s["active_requests"] == 0 and sched["num_running"] == 0 and sched["num_waiting"] == 0:
            break
        time.sleep(0.1)
    s = _stats(server)
    sched = s["scheduler"]
    assert s["active_requests"] == 0 and sched["num_running"] == 0, s
    assert sched["blocks_used"] == 0 and sched["blocks_free"] == sched["blocks_total"], s
    # 16 x 400 tokens would take minutes on this CPU: they were aborted, not run to the end
    assert time.monotonic() - t0 < 60
    metrics = httpx.get(server.url + "/metrics").text
    assert 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 0.0' in metrics
    canceled = [ln for ln in metrics.splitlines() if ln.startswith("nv_inference_request_failure")
                and 'model="ensemble"' in ln and 'reason="CANCELED"' in ln]
    assert canceled and float(canceled[0].split()[-1]) >= 16


def test_non_stream_client_timeout_aborts(server: ServerProc) -> None:
    """A /generate client that gives up is noticed by the disconnect watcher and aborted."""
    url = server.url + "/v2/models/ensemble/generate"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={"text_input": "Tell me a long story.", "max_tokens": 400,
                              "min_tokens": 400}, timeout=1.5)
    # the request leaves the server's registry when its client is gone; the engine frees its
    # blocks when it takes the abort, at its next step boundary
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = _stats(server)
        if s["active_requests"] == 0 and s["scheduler"]["num_running"] == 0:
            break
        time.sleep(0.1)
    s = _stats(server)
    assert s["active_requests"] == 0 and s["scheduler"]["blocks_used"] == 0, s
