"""A periodic stats line while the engine is busy: running and waiting requests, KV cache use,
and token throughput over the interval (`--stats-interval` seconds; 0 turns it off).

It rides on the engine loop's per-step callback, so an idle server logs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from scheduler.stats import SchedulerStats

logger = logging.getLogger("trtserve.stats")


class StatsLogger:
    """Wraps an on_step callback; logs at most once per `interval_s` while steps run."""

    def __init__(self, interval_s: float, inner: Callable[[SchedulerStats], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._inner = inner
        self._clock = clock
        self._since = clock()
        self._tokens = 0  # scheduled (prompt + decode) tokens since the last line
        self._generated = 0  # decode rows since the last line (one new token each)

    def __call__(self, stats: SchedulerStats) -> None:
        if self._inner is not None:
            self._inner(stats)
        if self.interval_s <= 0:
            return
        self._tokens += stats.num_scheduled_tokens
        self._generated += stats.num_generation_requests
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self.interval_s:
            return
        kv = stats.blocks_used / stats.blocks_total if stats.blocks_total else 0.0
        fields = {"running": stats.num_running, "waiting": stats.num_waiting,
                  "kv_cache_usage": round(kv, 4),
                  "tokens_per_s": round(self._tokens / elapsed, 1),
                  "generated_tokens_per_s": round(self._generated / elapsed, 1)}
        logger.info("stats: running=%d waiting=%d kv_cache=%.1f%% tok/s=%.1f (generated %.1f)",
                    stats.num_running, stats.num_waiting, 100.0 * kv, fields["tokens_per_s"],
                    fields["generated_tokens_per_s"], extra={"fields": fields})
        self._since, self._tokens, self._generated = now, 0, 0
