"""Per-step statistics the scheduler returns; `server/metrics/server_metrics.py` turns them into
Prometheus series."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    step_id: int  # step this snapshot was taken after (0 before the first step)
    num_running: int  # sequences holding KV blocks (prefilling or decoding)
    num_waiting: int  # queued, not yet admitted (includes preempted ones)
    num_context_requests: int  # sequences that ran a prefill chunk in this step
    num_generation_requests: int  # sequences that decoded in this step
    num_scheduled_tokens: int  # tokens run in this step
    max_batch_size: int  # configured cap on sequences per step
    max_num_tokens: int  # configured token budget per step
    blocks_total: int  # KV blocks in the pool
    blocks_free: int  # blocks on the free list (includes cached-but-unreferenced ones)
    blocks_used: int  # blocks referenced by live sequences
    blocks_cached: int  # free blocks still holding a reusable prefix (evictable)
    tokens_per_block: int
    preemptions_total: int  # cumulative recompute preemptions
    prefix_cache_queries_total: int  # cumulative prompt blocks looked up in the prefix cache
    prefix_cache_hits_total: int  # cumulative prompt blocks found there
    requests_completed_total: int  # cumulative finished requests (any reason)
    step_time_s: float  # wall time of the executor call of this step (0 when idle)
