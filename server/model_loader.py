"""The real loader: engine.runtime.load_model + scheduler EngineLoop, then a warm-up request."""

from __future__ import annotations

import asyncio
import logging
import time

from engine.options import EngineOptions
from engine.runtime import LoadedModel, load_model
from scheduler.config import SchedulerConfig
from scheduler.loop import EngineLoop
from scheduler.request import Request, SamplingParams
from server.cli.preflight import read_chat_template
from server.metrics.server_metrics import ServerMetrics
from server.metrics.stats_log import StatsLogger
from server.serving import ServingModel
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

WARMUP_PROMPT = "Hello"
WARMUP_TOKENS = 2


def engine_options(settings: ServerSettings) -> EngineOptions:
    return EngineOptions(model=settings.model, backend=settings.backend, dtype=settings.dtype,
                         q4_decode=settings.q4_decode, cpu_precision=settings.cpu_precision,
                         cpu_threads=settings.cpu_threads,
                         cuda_graphs=settings.cuda_graphs,
                         device_sampling=settings.device_sampling, cache_dir=settings.cache_dir,
                         engine_dir=settings.engine_dir, block_size=settings.block_size,
                         kv_cache_blocks=settings.kv_cache_blocks,
                         kv_cache_fraction=settings.kv_cache_fraction,
                         max_context=settings.max_model_len,
                         max_batch_size=settings.max_batch_size,
                         max_num_tokens=settings.max_num_tokens)


def scheduler_config(settings: ServerSettings, backend_tokens: int | None = None
                     ) -> SchedulerConfig:
    """The user's settings; an unset token budget is the backend's (the loaded model's step
    limit, engine/limits.py), else the scheduler's."""
    budget = settings.max_num_tokens or backend_tokens
    return SchedulerConfig(max_batch_size=settings.max_batch_size,
                           **({"max_num_tokens": budget} if budget else {}),
                           max_queue_size=settings.max_queue_size,
                           policy=settings.scheduler_policy,
                           enable_prefix_caching=settings.enable_prefix_caching)


async def warm_up(loop: EngineLoop, prompt_ids: list[int]) -> None:
    request = Request(request_id="warmup", prompt_token_ids=prompt_ids,
                      params=SamplingParams(max_tokens=WARMUP_TOKENS, ignore_eos=True),
                      arrival_time=time.monotonic())
    async for out in loop.add(request):
        if out.finished and out.error:
            raise RuntimeError(f"warm-up failed: {out.error}")


def _serving(lm: LoadedModel, loop: EngineLoop, cfg: SchedulerConfig,
             names: tuple[str, ...] = ()) -> ServingModel:
    return ServingModel(name=names[0] if names else lm.name, aliases=names[1:],
                        tokenizer=lm.tokenizer, loop=loop,
                        max_context=cfg.resolve_max_model_len(lm.executor.max_context),
                        max_batch_size=cfg.max_batch_size, max_queue_size=cfg.max_queue_size,
                        backend=lm.backend, close=lm.close)


async def load_serving_model(settings: ServerSettings, metrics: ServerMetrics) -> ServingModel:
    started = time.monotonic()
    lm = await asyncio.to_thread(load_model, engine_options(settings))
    tok = lm.tokenizer
    if settings.chat_template:  # --chat-template FILE replaces the model's own
        tok.chat_template = read_chat_template(settings.chat_template)
    cfg = scheduler_config(settings, lm.max_num_tokens)
    loop = EngineLoop(lm.executor, cfg, eos_token_ids=tok.eos_token_ids,
                      on_step=StatsLogger(settings.stats_interval, metrics.observe_step))
    await loop.start()
    try:
        await warm_up(loop, tok.encode(WARMUP_PROMPT))
    except BaseException:
        await loop.stop()
        lm.close()
        raise
    logger.info("loaded %s on %s in %.1fs (%d KV blocks of %d tokens)", lm.name, lm.backend,
                time.monotonic() - started, lm.executor.num_blocks, lm.executor.block_size)
    return _serving(lm, loop, cfg, settings.served_model_name)
