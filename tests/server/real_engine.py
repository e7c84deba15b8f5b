"""The real app over the real EngineLoop + Scheduler, with a scripted executor standing in for
the model (and the byte-level FakeTokenizer), for behaviour that lives in the scheduler/loop.

`ScriptedExecutor` makes output position i of every request prefer the token SCRIPT[i] (then
FILLER forever): its logits are SCRIPT_MARGIN above a deterministic, position-dependent noise,
so greedy output is the script and the other tokens have distinct log-probs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from server_fakes import FakeTokenizer

from scheduler.config import SchedulerConfig
from scheduler.loop import EngineLoop
from scheduler.plan import StepPlan, StepResult
from server.app import Loader, create_app
from server.serving import ServingModel
from server.settings import ServerSettings

SCRIPT_MARGIN = 10.0
FILLER = ord("x")


class ScriptedExecutor:
    def __init__(self, script: Sequence[int], vocab_size: int = FakeTokenizer.vocab_size,
                 step_s: float = 0.0, num_blocks: int = 256, block_size: int = 16,
                 max_context: int = 1024) -> None:
        self.script = list(script)
        self.vocab_size, self.step_s = vocab_size, step_s
        self.num_blocks, self.block_size, self.max_context = num_blocks, block_size, max_context
        self._prompt_len: dict[int, int] = {}

    def _row(self, pos: int) -> np.ndarray:
        rng = np.random.default_rng(pos)
        row = rng.standard_normal(self.vocab_size).astype(np.float32)
        row[128:] -= SCRIPT_MARGIN  # alternatives stay ASCII: distinct token strings
        want = self.script[pos] if pos < len(self.script) else FILLER
        row[want] = row.max() + SCRIPT_MARGIN
        return row

    def execute(self, plan: StepPlan) -> StepResult:
        if self.step_s:
            time.sleep(self.step_s)
        rows = []
        for s in plan.seqs:
            if not s.want_logits:
                continue
            end = s.start_pos + len(s.token_ids)
            prompt_len = self._prompt_len.setdefault(s.seq_id, end)  # first logits: prompt done
            rows.append(self._row(end - prompt_len))
        logits = np.stack(rows) if rows else np.zeros((0, self.vocab_size), np.float32)
        return StepResult(step_id=plan.step_id, logits=logits)

    def close(self) -> None:
        return None


def scripted_model(script: str | Sequence[int], step_s: float = 0.0,
                   on_step: object = None) -> ServingModel:
    """A ServingModel whose loop is the real EngineLoop over a ScriptedExecutor (not started)."""
    ids = list(script.encode()) if isinstance(script, str) else list(script)
    tok = FakeTokenizer()
    ex = ScriptedExecutor(ids, step_s=step_s)
    cfg = SchedulerConfig(max_batch_size=8, max_queue_size=16)
    loop = EngineLoop(ex, cfg, eos_token_ids=tok.eos_token_ids,
                      on_step=on_step)  # type: ignore[arg-type]
    return ServingModel(name="fake-model", tokenizer=tok, loop=loop, max_context=ex.max_context,
                        max_batch_size=cfg.max_batch_size, max_queue_size=cfg.max_queue_size,
                        backend="scripted")


def scripted_loader(script: str | Sequence[int], step_s: float = 0.0):  # noqa: ANN201
    """An app-factory loader: the scripted model, its loop feeding the app's metrics."""
    async def load(settings: object, metrics: object) -> ServingModel:
        model = scripted_model(script, step_s, on_step=metrics.observe_step)  # type: ignore[attr-defined]
        await model.loop.start()
        return model
    return load


@asynccontextmanager
async def serving(loader: Loader, **settings: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app over what `loader` loads, lifespan running and ready, and an async client to it
    (requests in several tasks at once run concurrently)."""
    app = create_app(ServerSettings(**{"model": "fake-model", **settings}), loader)
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    try:
        while (await client.get("/v2/health/ready")).status_code != 200:
            await asyncio.sleep(0.01)
        yield app, client
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
