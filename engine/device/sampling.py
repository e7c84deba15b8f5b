"""Greedy sampling on the device: only token ids (and the rows the host still needs) cross.

After the graph wrote a step's fp32 logits `[R, vocab]` on the device, the NVRTC kernel
`logits_pick_f32` writes each row's argmax, skipping the row's banned ids (min_tokens end ids,
bad-word completions: `ScheduledSeq.banned`), one thread block per row. The host then copies the
int64 ids and only the logits rows the plan marks `host_logits` (sampled or penalised rows,
log-probs), merged into runs of adjacent rows, instead of every row's whole vocabulary.

Ties go to the lowest id, as numpy's argmax; a NaN counts as +inf (numpy would return the first
NaN); a row whose every id is banned picks id 0. Source, argument packing and the ban matrix are
pure Python (tested on CPU against the fake device).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from engine.device.cuda import CudaContext, Stream
from engine.device.kernels import RowKernel
from scheduler.plan import ScheduledSeq

logger = logging.getLogger(__name__)

PICK_THREADS = 256  # threads per row (a power of two: the reduction halves it)
PICK_KERNEL = "logits_pick_f32"

PICK_SOURCE = r"""
#define THREADS %d
extern "C" __global__ void logits_pick_f32(
    const float* __restrict__ logits, const long long* __restrict__ bans,
    long long* __restrict__ out, int vocab, int num_bans)
{
    __shared__ float best_v[THREADS];
    __shared__ int best_i[THREADS];
    __shared__ long long row_bans[64];
    const int row = blockIdx.x, tid = threadIdx.x;
    for (int k = tid; k < num_bans; k += THREADS) row_bans[k] = bans[(long long)row * num_bans + k];
    __syncthreads();
    const float* x = logits + (long long)row * vocab;
    float bv = -__int_as_float(0x7f800000);  // -inf
    int bi = 0x7fffffff;
    for (int i = tid; i < vocab; i += THREADS) {
        bool banned = false;
        for (int k = 0; k < num_bans; ++k) banned |= (row_bans[k] == i);
        if (banned) continue;
        float v = x[i];
        if (v != v) v = __int_as_float(0x7f800000);  // NaN -> +inf
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
    best_v[tid] = bv; best_i[tid] = bi;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float v = best_v[tid + s]; const int i = best_i[tid + s];
            if (v > best_v[tid] || (v == best_v[tid] && i < best_i[tid])) {
                best_v[tid] = v; best_i[tid] = i;
            }
        }
        __syncthreads();
    }
    if (tid == 0) out[row] = best_i[0] == 0x7fffffff ? 0 : best_i[0];
}
""" % PICK_THREADS

MAX_BANS = 64  # the kernel's shared ban list; the scheduler sends at most 32 per row


def ban_matrix(rows: Sequence[ScheduledSeq]) -> np.ndarray:
    """int64 [logit rows, K]: each want_logits row's banned ids, padded with -1 (K = the most
    any row has; 0 columns when none has any)."""
    wanted = [s for s in rows if s.want_logits]
    k = max((len(s.banned) for s in wanted), default=0)
    if k > MAX_BANS:
        raise ValueError(f"a row bans {k} ids; the device sampler takes at most {MAX_BANS}")
    bans = np.full((len(wanted), k), -1, dtype=np.int64)
    for i, s in enumerate(wanted):
        bans[i, : len(s.banned)] = s.banned
    return bans


def host_rows(rows: Sequence[ScheduledSeq]) -> np.ndarray:
    """Indices (among the want_logits rows) of the rows whose full logits the host needs."""
    wanted = [s.host_logits for s in rows if s.want_logits]
    return np.flatnonzero(np.asarray(wanted, dtype=bool)).astype(np.int64)


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row indices as (first, count) runs of adjacent rows: one copy per run."""
    runs: list[tuple[int, int]] = []
    for r in rows.tolist():
        if runs and runs[-1][0] + runs[-1][1] == r:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((r, 1))
    return runs


class PickKernel(RowKernel):
    """The compiled `logits_pick_f32` of one context (compiled at construction)."""

    def __init__(self, context: CudaContext) -> None:
        super().__init__(context, PICK_SOURCE, PICK_KERNEL, PICK_THREADS)

    def launch(self, logits_ptr: int, bans_ptr: int, out_ptr: int, rows: int, vocab: int,
               num_bans: int, stream: Stream) -> None:
        """out[r] = argmax of logits[r] skipping bans[r], for r < rows, on `stream`."""
        self.launch_rows(rows, [("ptr", logits_ptr), ("ptr", bans_ptr), ("ptr", out_ptr),
                                ("i32", vocab), ("i32", num_bans)], stream)
