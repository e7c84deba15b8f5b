"""One source of truth for step limits, on CPU over the cuda-python fake device: the options'
limits reach the GPU executor (and the scheduler reads them back from it), and a step the
executor still refuses fails only its own requests while the engine keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from engine import runtime
from engine.backends import ORT_CPU, ORT_CUDA
from engine.executors import ort_cuda
from engine.limits import check_max_context, decide_limits
from scheduler.config import SchedulerConfig
from scheduler.loop import EngineLoop
from scheduler.request import ErrorKind, FinishReason, Request, RequestOutput, SamplingParams
from server.model_loader import engine_options
from server.settings import ServerSettings

from .tiny_model import BLOCK_SIZE, TINY

NUM_BLOCKS = 64




def test_settings_reach_the_engine_options(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServerSettings(max_batch_size=7, max_num_tokens=300, max_model_len=96,
                              cuda_graphs=False, device_sampling=False)
    options = engine_options(settings)
    assert (options.max_batch_size, options.max_num_tokens, options.max_context) == (7, 300, 96)
    assert options.cuda_graphs is False and runtime.EngineOptions().cuda_graphs is True
    assert options.device_sampling is False and runtime.EngineOptions().device_sampling
    monkeypatch.setenv("TRTSERVE_MAX_MODEL_LEN", "1000")
    monkeypatch.setenv("TRTSERVE_CUDA_GRAPHS", "false")
    from_env = engine_options(ServerSettings())
    assert from_env.max_context == 1000 and from_env.cuda_graphs is False


def test_unset_token_budget_is_the_backends() -> None:
    assert decide_limits(8, None, ORT_CPU.max_num_tokens, 128).max_num_tokens == 256
    assert decide_limits(8, None, ORT_CUDA.max_num_tokens, 128).max_num_tokens == (
        SchedulerConfig().max_num_tokens)
    assert decide_limits(8, 100, ORT_CPU.max_num_tokens, 128).max_num_tokens == 100


def test_non_default_limits_reach_the_executor_and_the_scheduler(
        fake_host_ort: object, tiny_fp16_graph: Path) -> None:
    """runtime builds the CUDA executor with the options' limits (it ignored them before); the
    loop's scheduler plans within what the executor reports."""
    options = runtime.EngineOptions(kv_cache_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                    max_batch_size=3, max_num_tokens=40, max_context=96)
    limits = decide_limits(options.max_batch_size, options.max_num_tokens,
                           ORT_CUDA.max_num_tokens, check_max_context(options, TINY))
    executor = runtime._executor(ORT_CUDA, tiny_fp16_graph, TINY, options, limits, "float16", None)
    try:
        assert (executor.max_batch_size, executor.max_num_tokens, executor.max_context) == (
            3, 40, 96)
        assert executor.device_io.limits == limits
        loop = EngineLoop(executor, SchedulerConfig(max_batch_size=256, max_num_tokens=8192),
                          eos_token_ids=())
        config = loop.scheduler.config
        assert (config.max_batch_size, config.max_num_tokens) == (3, 40)
        assert loop.scheduler.max_model_len == 96
        assert executor.samples_on_device and loop.scheduler.device_sampling
    finally:
        executor.close()
    off = dataclasses.replace(options, device_sampling=False)
    executor = runtime._executor(ORT_CUDA, tiny_fp16_graph, TINY, off, limits, "float16", None)
    try:
        assert not executor.samples_on_device
        loop = EngineLoop(executor, SchedulerConfig(), eos_token_ids=())
        assert not loop.scheduler.device_sampling
    finally:
        executor.close()
    assert fake_host_ort.allocations == {}  # type: ignore[attr-defined]


def _request(rid: str, n: int) -> Request:
    return Request(request_id=rid, prompt_token_ids=[(7 * n + i) % TINY.vocab_size + 1
                                                     for i in range(n)],
                   params=SamplingParams(max_tokens=4, ignore_eos=True),
                   arrival_time=time.monotonic())


class _OverstatingExecutor(ort_cuda.OrtCudaExecutor):
    """Claims a larger batch than its buffers hold: the bug a refused step stands for."""

    @property
    def max_batch_size(self) -> int:
        return 3


def test_a_refused_step_fails_only_its_requests(fake_host_ort: object,
                                                tiny_fp16_graph: Path) -> None:
    """Three requests form a 3-sequence step the executor (built for 2) refuses: those three
    end with ERROR; the fourth, waiting behind them, and one sent afterwards complete; no KV
    block leaks and the loop is not dead."""
    executor = _OverstatingExecutor(
        tiny_fp16_graph, TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
        max_context=TINY.max_position_embeddings,
        limits=decide_limits(2, 64, None, TINY.max_position_embeddings))

    async def collect(loop: EngineLoop, request: Request) -> RequestOutput:
        return [out async for out in loop.add(request)][-1]

    async def main() -> None:
        loop = EngineLoop(executor, SchedulerConfig(max_batch_size=3, max_num_tokens=64,
                                                    enable_prefix_caching=False),
                          eos_token_ids=())
        await loop.start()
        try:
            first = await asyncio.gather(*(collect(loop, _request(f"r{i}", 5 + i))
                                           for i in range(4)))
            later = await collect(loop, _request("later", 6))
            assert loop.dead is None
            loop.scheduler.check_integrity()
            assert loop.scheduler.allocator.num_used == 0
        finally:
            await loop.stop()
        reasons = [out.finish_reason for out in first]
        assert reasons == [FinishReason.ERROR] * 3 + [FinishReason.LENGTH], first
        assert all(out.error_type is ErrorKind.STEP_REFUSED for out in first[:3])
        assert "max_batch_size is 2" in (first[0].error or "")
        assert later.finish_reason is FinishReason.LENGTH and later.num_output_tokens == 4

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        executor.close()
    assert fake_host_ort.allocations == {}  # type: ignore[attr-defined]
