"""One step's device-side I/O, shared by the GPU executors (onnxruntime CUDA, TensorRT).

Per step: pack the plan (engine/step_inputs.py `pack_plan`, the graph's own packing), stage
every small input + the slot mapping + block-copy pairs into ONE pinned -> device copy, run the
block copies, let the executor run the graph into `new_kv` / `logits` device buffers sized for
the step limits, then scatter new K/V into the pool and copy the logits back through pinned
memory. The KV pool never leaves the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from engine.config import ModelConfig
from engine.device.cuda import CudaContext, Stream
from engine.device.draw_kernel import DrawArrays, DrawKernel, draw_arrays
from engine.device.draw_source import LOGPROB_PARAM, PARAMS
from engine.device.kernels import KVKernels
from engine.device.memory import DeviceBuffer, PinnedBuffer, StagingArea
from engine.device.sampling import MAX_BANS, PickKernel, ban_matrix, host_rows, row_runs
from engine.device_kv_pool import DeviceKVPool, PoolGeometry, geometry_for
from engine.limits import StepLimits
from engine.step_inputs import Bucket, pack_decode, pack_plan, pair_feeds
from scheduler.plan import StepPlan, StepRefusedError
from scheduler.step_rows import MAX_DEVICE_HISTORY, MAX_DRAW_BANS

logger = logging.getLogger(__name__)

I64 = 8


class _Closeable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closeable)


@dataclass(frozen=True, slots=True)
class DeviceTensor:
    """A graph input or output living in device memory."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class StagedStep:
    """A plan's inputs on the device, ready for the graph."""

    inputs: dict[str, DeviceTensor]  # every graph input, kv_cache included
    logits: DeviceTensor  # where the graph writes logits [R', vocab] (R' >= 1)
    new_kv: DeviceTensor  # where the graph writes new K/V [L, 2, KVH, T, D]
    argmax: DeviceTensor  # where the graph writes the argmax of each logits row, int64 [R']
    slots_ptr: int  # int64 [T] slot mapping on the device
    num_tokens: int
    num_rows: int  # logit rows the plan wants (R' - num_rows padding rows are dropped)
    bucket: Bucket | None = None  # the padded decode shape, when staged for a captured graph
    bans_ptr: int = 0  # int64 [num_rows, num_bans] banned ids per logits row (device sampler)
    num_bans: int = 0
    host_rows: np.ndarray | None = None  # logits rows the host needs (device sampling only)
    draws: DrawArrays | None = None  # the rows the device draws (device sampling only)
    draw_ptrs: tuple[int, int, int, int] = (0, 0, 0, 0)  # their arrays on the device


def staging_bytes(limits: StepLimits, block_size: int, num_blocks: int,
                  kv_heads: int = 0) -> int:
    """Upper bound of one step's staged inputs (20 arrays, each 256-byte aligned; `kv_heads`:
    with the paged prefill graph's pair arrays, engine/step_inputs.py `pair_feeds`)."""
    t, b = limits.max_num_tokens, limits.max_batch_size
    max_blocks = -(-limits.max_context // block_size)
    elems = 5 * t + b * max_blocks + b + b * t + b + 2 * num_blocks + b * MAX_BANS
    draws = b * (1 + PARAMS + MAX_DRAW_BANS + MAX_DEVICE_HISTORY // 2)  # history: int32
    pairs = kv_heads * (3 * t + 2 * b + b * max_blocks) + 1
    return (elems + draws + pairs) * I64 + 20 * StagingArea.ALIGN


def check_plan(plan: StepPlan, limits: StepLimits, block_size: int, num_blocks: int) -> None:
    """Refuse a plan the buffers cannot hold (StepRefusedError naming the limit)."""
    if plan.num_tokens > limits.max_num_tokens:
        raise StepRefusedError(f"step has {plan.num_tokens} tokens, max_num_tokens is "
                               f"{limits.max_num_tokens}")
    if len(plan.seqs) > limits.max_batch_size:
        raise StepRefusedError(f"step has {len(plan.seqs)} sequences, max_batch_size is "
                               f"{limits.max_batch_size}")
    for seq in plan.seqs:
        end = seq.start_pos + len(seq.token_ids)
        if not seq.token_ids or end > limits.max_context:
            raise StepRefusedError(f"seq {seq.seq_id}: {len(seq.token_ids)} tokens at "
                                   f"{seq.start_pos} do not fit max_context {limits.max_context}")
        if len(seq.block_table) * block_size < end:
            raise StepRefusedError(f"seq {seq.seq_id}: block table too short for {end} tokens")
        used = seq.block_table[: -(-end // block_size)]  # min/max: C loops, 256 rows a step
        if used and (min(used) < 0 or max(used) >= num_blocks):
            raise StepRefusedError(f"seq {seq.seq_id}: block id outside 0..{num_blocks - 1}")
    for src, dst in plan.block_copies:
        if not (0 <= src < num_blocks and 0 <= dst < num_blocks):
            raise StepRefusedError(f"block copy {src}->{dst} outside 0..{num_blocks - 1}")


class DeviceStepIO:
    """Owns the device side of stepping one model: context use, stream, kernels, pool, buffers."""

    def __init__(self, context: CudaContext, config: ModelConfig, *, num_blocks: int,
                 block_size: int, kv_dtype: str, limits: StepLimits,
                 device_sampling: bool = False, paged: bool = False) -> None:
        self.context = context
        self.paged = paged  # stage the paged graphs' inputs too (engine/graph/paged.py)
        self.config = config
        self.limits = limits
        self.geometry: PoolGeometry = geometry_for(config, num_blocks, block_size, kv_dtype)
        self._owned: list[_Closeable] = []
        try:
            self.stream = self._own(Stream())
            self.kernels = self._own(KVKernels(context))
            self.kernels.functions(kv_dtype)  # compile now: fail at start-up, not mid-serve
            self.pool = self._own(DeviceKVPool(self.geometry, self.kernels, self.stream))
            self.staging = self._own(StagingArea(staging_bytes(
                limits, block_size, num_blocks, config.num_kv_heads if paged else 0)))
            kv_bytes = (self.geometry.num_planes * config.num_kv_heads * limits.max_num_tokens
                        * config.head_dim * self.geometry.itemsize)
            self.new_kv = self._own(DeviceBuffer(kv_bytes))
            logit_bytes = limits.max_batch_size * config.vocab_size * 4
            self.logits = self._own(DeviceBuffer(logit_bytes))
            self.logits_host = self._own(PinnedBuffer(logit_bytes))
            self.argmax = self._own(DeviceBuffer(limits.max_batch_size * I64))
            self.argmax_host = self._own(PinnedBuffer(limits.max_batch_size * I64))
            self.picker = self._own(PickKernel(context)) if device_sampling else None
            self.drawer = self._own(DrawKernel(context)) if device_sampling else None
            lp_bytes = limits.max_batch_size * 8 if device_sampling else 8
            self.logprob = self._own(DeviceBuffer(lp_bytes))
            self.logprob_host = self._own(PinnedBuffer(lp_bytes))
            self.stream.synchronize()
        except BaseException:
            self.close()
            raise

    def _own(self, obj: _C) -> _C:
        self._owned.append(obj)
        return obj

    def stage(self, plan: StepPlan, bucket: Bucket | None = None) -> StagedStep:
        """Check + pack + upload the plan (padded to `bucket`, a decode step replayed as a CUDA
        graph: same shapes, same addresses), then run its block copies on the stream."""
        g = self.geometry
        check_plan(plan, self.limits, g.block_size, g.num_blocks)
        self.context.make_current()
        if bucket is not None:
            feeds, slots = pack_decode(plan.seqs, g.block_size, bucket)
            num_rows = len(plan.seqs)
        else:
            packed = pack_plan(plan, g.block_size)
            feeds = dict(packed.feeds)
            num_rows = len(feeds["logit_index"])
            if num_rows == 0:  # keep every dim >= 1 (TensorRT profiles): compute one row
                feeds["logit_index"] = np.zeros(1, dtype=np.int64)
            slots = packed.slot_blocks * g.block_size + packed.slot_offsets
            if self.paged:
                feeds |= pair_feeds(plan.seqs, slots, g.block_size, g.num_blocks,
                                    g.num_kv_heads)
        pairs = np.asarray(plan.block_copies, dtype=np.int64).reshape(-1, 2)
        bans = ban_matrix(plan.seqs) if self.picker is not None else np.zeros((0, 0), np.int64)
        draws = draw_arrays(plan.seqs) if self.picker is not None else None
        tail = [] if draws is None else [draws.rows, draws.params, draws.history, draws.bans]
        names = list(feeds)
        ptrs = self.staging.upload([feeds[n] for n in names] + [slots, pairs, bans, *tail],
                                   self.stream)
        draw_ptrs = (0, 0, 0, 0) if draws is None else (ptrs[-4], ptrs[-3], ptrs[-2], ptrs[-1])
        ptrs = ptrs[:len(ptrs) - len(tail)]
        inputs = {n: DeviceTensor(p, feeds[n].shape, np.dtype(np.int64))
                  for n, p in zip(names, ptrs, strict=False)}
        inputs["kv_cache"] = DeviceTensor(self.pool.ptr, g.graph_shape, g.np_dtype)
        if self.paged and bucket is not None:
            inputs["slot_mapping"] = DeviceTensor(ptrs[-3], (len(slots),), np.dtype(np.int64))
        if len(pairs):
            self.pool.copy_blocks(ptrs[-2], len(pairs), self.stream)
        t = len(slots)
        kv_shape = (self.config.num_layers, 2, self.config.num_kv_heads, t, self.config.head_dim)
        rows = len(feeds["logit_index"])
        return StagedStep(
            inputs=inputs, slots_ptr=ptrs[-3], num_tokens=t, num_rows=num_rows, bucket=bucket,
            bans_ptr=ptrs[-1], num_bans=bans.shape[1],
            host_rows=host_rows(plan.seqs) if self.picker is not None else None,
            draws=draws, draw_ptrs=draw_ptrs,
            logits=DeviceTensor(self.logits.ptr, (rows, self.config.vocab_size),
                                np.dtype(np.float32)),
            new_kv=DeviceTensor(self.new_kv.ptr, kv_shape, g.np_dtype),
            argmax=DeviceTensor(self.argmax.ptr, (rows,), np.dtype(np.int64)))

    def copy_blocks_only(self, plan: StepPlan) -> None:
        """A plan with no sequences may still carry block copies: run them and wait."""
        g = self.geometry
        check_plan(plan, self.limits, g.block_size, g.num_blocks)
        if not plan.block_copies:
            return
        self.context.make_current()
        pairs = np.asarray(plan.block_copies, dtype=np.int64).reshape(-1, 2)
        (ptr,) = self.staging.upload([pairs], self.stream)
        self.pool.copy_blocks(ptr, len(pairs), self.stream)
        self.stream.synchronize()

    def finish(self, step: StagedStep) -> np.ndarray:
        """After the graph ran on the stream: scatter new K/V, fetch logits [num_rows, vocab]."""
        return self.finish_with_argmax(step, want_argmax=False)[0]

    def finish_with_argmax(self, step: StagedStep, want_argmax: bool = True,
                           scatter: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Like `finish`, plus the graph's argmax output [num_rows] (int64) when wanted
        (`scatter` False: the graph wrote the new K/V into the pool itself)."""
        if scatter:
            self.pool.scatter(step.new_kv.ptr, step.slots_ptr, step.num_tokens, self.stream)
        rows, vocab = step.num_rows, self.config.vocab_size
        if rows == 0:
            self.stream.synchronize()
            return (np.zeros((0, vocab), dtype=np.float32),
                    np.zeros(0, dtype=np.int64) if want_argmax else None)
        host = self.logits_host.array((rows, vocab), np.float32)
        self.logits.copy_to_host(host, self.stream)
        picks = self.argmax_host.array((rows,), np.int64) if want_argmax else None
        if picks is not None:
            self.argmax.copy_to_host(picks, self.stream)
        self.stream.synchronize()
        return host.copy(), (picks.copy() if picks is not None else None)

    def finish_sampled(self, step: StagedStep, scatter: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """After the graph ran: scatter new K/V, pick every row's token on the device (argmax
        with bans skipped, or the row's draw) and fetch (host rows' logits [k, vocab] taken
        before any draw edits them, ids [num_rows], host row indices, log-probs [num_rows]
        (NaN where no draw asked; None when none did)). `scatter` as in `finish_with_argmax`."""
        assert self.picker is not None and self.drawer is not None, "no device sampler"
        assert step.host_rows is not None and step.draws is not None, "staged without sampler"
        if scatter:
            self.pool.scatter(step.new_kv.ptr, step.slots_ptr, step.num_tokens, self.stream)
        rows, vocab, draws = step.num_rows, self.config.vocab_size, step.draws
        host = self.logits_host.array((len(step.host_rows), vocab), np.float32)
        done = 0
        for first, count in row_runs(step.host_rows):
            self.logits.copy_to_host(host[done:done + count], self.stream,
                                     offset=first * vocab * 4)
            done += count
        self.picker.launch(step.logits.ptr, step.bans_ptr, self.argmax.ptr, rows, vocab,
                           step.num_bans, self.stream)
        self.drawer.launch(step.logits.ptr, step.draw_ptrs, self.argmax.ptr, self.logprob.ptr,
                           draws, vocab, self.stream)
        picks = self.argmax_host.array((rows,), np.int64)
        if rows:
            self.argmax.copy_to_host(picks, self.stream)
        lps = self.logprob_host.array((rows,), np.float64) if draws.logprobs else None
        if lps is not None:
            self.logprob.copy_to_host(lps, self.stream)
        self.stream.synchronize()
        return host.copy(), picks.copy(), step.host_rows, _asked(lps, draws)

    def close(self) -> None:
        """Releases every owned resource, newest first; idempotent."""
        while self._owned:
            obj = self._owned.pop()
            try:
                obj.close()
            except Exception:  # keep releasing the rest; the first failure is logged
                logger.exception("releasing %s failed", type(obj).__name__)

    def __enter__(self) -> DeviceStepIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _asked(lps: np.ndarray | None, draws: DrawArrays) -> np.ndarray | None:
    """The fetched log-probs with NaN for every row whose draw did not ask for one."""
    if lps is None:
        return None
    out = np.full(lps.shape[0], np.nan)
    asked = draws.rows[draws.params[:, LOGPROB_PARAM] != 0.0]
    out[asked] = lps[asked]
    return out
