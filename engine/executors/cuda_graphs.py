"""Decode steps replayed as CUDA graphs: the bucket of a decode step and its padded inputs.

A decode step (every sequence runs one token and wants its logits) is padded to a bucket so its
shapes repeat: the batch to the next power of two (at most max_batch_size; pad rows run token 0 at
position 0 with no past, their slot is -1 so the KV scatter skips them, their logits are dropped)
and the past blocks per sequence to the next power of two, at least MIN_BLOCKS (at most the
context's blocks; the block of the new token counts: a paged graph writes it there; pad columns
name block 0 and are masked by past_lens). The onnxruntime CUDA
executor runs each bucket in its own session whose symbolic dims are fixed (free-dimension
overrides): with every shape static, onnxruntime folds the graph's shape arithmetic into constants,
every node runs on the CUDA EP, and `enable_cuda_graph` captures the step once and replays it. The
step's inputs and outputs sit at the same device addresses at every step of a bucket (DeviceStepIO
stages them in a fixed order into one staging area). Prefill and mixed steps run uncaptured through
the dynamic-shape session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from engine.step_inputs import Bucket
from scheduler.plan import StepPlan, StepResult

logger = logging.getLogger(__name__)

MAX_SESSIONS = 32  # captured buckets kept; each session holds its own copy of the weights
MIN_BLOCKS = 16  # past blocks of the smallest context bucket: short contexts share one bucket


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def decode_bucket(plan: StepPlan, block_size: int, max_batch_size: int,
                  max_blocks: int) -> Bucket | None:
    """The bucket of a pure decode plan, or None (prefill, mixed or rows without logits)."""
    seqs = plan.seqs
    if not seqs or any(len(s.token_ids) != 1 or not s.want_logits for s in seqs):
        return None
    needed = max(s.start_pos // block_size + 1 for s in seqs)  # the new token's block too
    if len(seqs) > max_batch_size or needed > max_blocks:
        return None  # over the limits: check_plan refuses it
    return Bucket(min(next_pow2(len(seqs)), max_batch_size),
                  min(max(next_pow2(needed), MIN_BLOCKS), max_blocks))


def startup_buckets(max_batch_size: int, max_blocks: int) -> list[Bucket]:
    """The buckets captured at start-up: every batch bucket at the shortest context bucket."""
    blocks = min(MIN_BLOCKS, max_blocks)
    batches = sorted({min(1 << i, max_batch_size) for i in range(max_batch_size.bit_length() + 1)})
    return [Bucket(b, blocks) for b in batches]


def split_mixed(plan: StepPlan) -> tuple[StepPlan, StepPlan] | None:
    """A mixed plan as (its decode rows, the rest), so the decodes run as a captured bucket and
    the prefill chunks alone (padding them together would give every decode row the chunk's
    query length); None when the plan is not mixed. The block copies go with the first part."""
    decodes = [s for s in plan.seqs if len(s.token_ids) == 1 and s.want_logits]
    if not decodes or len(decodes) == len(plan.seqs):
        return None
    rest = [s for s in plan.seqs if not (len(s.token_ids) == 1 and s.want_logits)]
    return (StepPlan(plan.step_id, decodes, plan.block_copies), StepPlan(plan.step_id, rest))


def merge_results(plan: StepPlan, parts: tuple[StepPlan, StepPlan],
                  results: Sequence[StepResult]) -> StepResult:
    """The parts' logits (and argmax, log-prob) rows back in the plan's order. Results of a
    device sampler (`logits_rows` set) merge their host rows the same way."""
    rows: dict[int, tuple[np.ndarray | None, int | None, float]] = {}
    for part, result in zip(parts, results, strict=True):
        wanted = [s.seq_id for s in part.seqs if s.want_logits]
        at = (dict(zip(result.logits_rows.tolist(), range(len(result.logits_rows)), strict=True))
              if result.logits_rows is not None else None)
        for k, seq_id in enumerate(wanted):
            pick = None if result.argmax is None else int(result.argmax[k])
            lp = np.nan if result.logprobs is None else float(result.logprobs[k])
            j = k if at is None else at.get(k)
            rows[seq_id] = (None if j is None else result.logits[j], pick, lp)
    order = [rows[s.seq_id] for s in plan.seqs if s.want_logits]
    has_argmax = all(r.argmax is not None for r in results)
    argmax = np.array([r[1] for r in order], dtype=np.int64) if has_argmax else None
    device = any(r.logits_rows is not None for r in results)
    host = [k for k, r in enumerate(order) if r[0] is not None]
    got = [order[k][0] for k in host]
    logits = np.stack(got) if got else results[0].logits[:0]
    logprobs = (np.array([r[2] for r in order]) if any(r.logprobs is not None for r in results)
                else None)
    return StepResult(plan.step_id, logits, argmax,
                      logits_rows=np.array(host, dtype=np.int64) if device else None,
                      logprobs=logprobs)


def bucket_dims(bucket: Bucket, pool_rows: int, block_size: int,
                pool_blocks: int = 0) -> dict[str, int]:
    """Every symbolic dim of the graphs (engine/builder.py I/O table; `pool_blocks`, KVH * NB:
    the paged graph's cache inputs, engine/graph/paged.py) fixed for `bucket`."""
    b = bucket.batch
    return {"T": b, "Tq": 1, "B": b, "R": b, "MB": bucket.blocks, "pool_rows": pool_rows,
            "BS": block_size, "pool_blocks": pool_blocks}


class BucketSessions:
    """One captured session per bucket, made on first use; a bucket whose session cannot be
    made (e.g. a node the CUDA EP cannot run) is remembered and runs uncaptured."""

    def __init__(self, factory: Callable[[Bucket], object],
                 max_sessions: int = MAX_SESSIONS) -> None:
        self._factory = factory
        self._max = max_sessions
        self._sessions: dict[Bucket, object | None] = {}
        self.replays = 0  # serving steps run through a captured session (the executor counts)

    def usable(self, bucket: Bucket) -> bool:
        """Whether `bucket` runs captured (its session is made here on first use)."""
        if bucket not in self._sessions:
            if len(self.buckets) >= self._max:
                return False
            self._sessions[bucket] = self._make(bucket)
        return self._sessions[bucket] is not None

    def get(self, bucket: Bucket) -> object:
        """The captured session of a usable bucket."""
        session = self._sessions[bucket]
        assert session is not None, f"bucket {bucket} is not usable"
        return session

    def disable(self, bucket: Bucket, exc: BaseException) -> None:
        """A captured run failed (e.g. a kernel that refuses capture): run it uncaptured."""
        logger.warning("decode bucket %s runs without a CUDA graph from now on: %s", bucket,
                       " ".join(str(exc).split())[:500])
        self._sessions[bucket] = None

    def _make(self, bucket: Bucket) -> object | None:
        try:
            session = self._factory(bucket)
        except Exception as exc:  # this bucket runs uncaptured from now on
            logger.warning("decode bucket %s runs without a CUDA graph: %s", bucket,
                           " ".join(str(exc).split())[:500])
            return None
        logger.info("decode bucket %s: session made (%d captured buckets)", bucket,
                    1 + len(self.buckets))
        return session

    @property
    def buckets(self) -> list[Bucket]:
        """Buckets with a captured session."""
        return [b for b, s in self._sessions.items() if s is not None]

    def clear(self) -> None:
        self._sessions.clear()
