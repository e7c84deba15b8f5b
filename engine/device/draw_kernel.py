"""Sampled, penalised and log-prob rows chosen on the device: the NVRTC kernel `logits_draw_f32`.

One thread block per drawn row (`ScheduledSeq.draw`, scheduler/plan.py `DeviceDraw`), after the
graph wrote the step's fp32 logits `[R, vocab]`:
1. the raw row's max and log-sum-exp (double), when the row asks for its log-prob;
2. the edits, in place and in `process_row`'s order: the repetition penalty on each distinct
   id of the row's history (deduplicated on the device: the host only copies the token list),
   presence/frequency by each id's output count, then the bans to -inf; the raw values of
   edited ids are kept in shared memory;
3. greedy rows (temperature 0), or rows whose max is not finite: argmax (NaN as +inf, ties to
   the lowest id, as `logits_pick_f32`);
4. else weights e = expf((x - max) * (1 / temperature)), computed again in each pass, and the
   cut: top_k's k-th largest weight and top_p's nucleus edge (the largest weight whose
   at-least-as-heavy set reaches top_p times the kept mass), each found by a 4-pass radix
   select over the weights' float bits (256 bins of counts / of double masses), and min_p;
5. the token: the first id, in vocabulary order, whose running sum of kept weights exceeds
   u * (kept mass): per-thread chunk sums (double), one thread's running sum over them (exact
   and monotone), and the owning thread walks its chunk.
The token id goes to `out[row]` (over `logits_pick_f32`'s answer for that row) and its raw
log-prob to `logprob[row]`. This is scheduler/sampling.py's arithmetic (`host_draw`, the test
reference) up to the order of float sums: a draw can differ only where u falls within rounding
of a CDF step. Packing (`draw_arrays`) is pure Python, tested on CPU against the fake device.
The source is engine/device/draw_source.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.device.cuda import CudaContext, Stream
from engine.device.draw_source import DRAW_KERNEL, DRAW_SOURCE, DRAW_THREADS, PARAMS
from engine.device.kernels import RowKernel
from scheduler.plan import ScheduledSeq
from scheduler.step_rows import MAX_DEVICE_HISTORY, MAX_DRAW_BANS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DrawArrays:
    """A step's drawn rows, packed for `logits_draw_f32`."""

    rows: np.ndarray  # int64 [S]: each drawn row's index among the want_logits rows
    params: np.ndarray  # float64 [S, PARAMS]
    history: np.ndarray  # int32 [S, H]: penalised rows' tokens (H = the longest such history)
    bans: np.ndarray  # int64 [S, B] (B = the most bans any row has), padded with -1
    logprobs: bool  # some row asks for its log-prob


def draw_arrays(rows: Sequence[ScheduledSeq]) -> DrawArrays:
    """The want_logits rows of a plan that carry a `draw`, as the kernel's arrays."""
    wanted = [s for s in rows if s.want_logits]
    drawn = [(i, s.draw) for i, s in enumerate(wanted) if s.draw is not None]
    h = max((len(d.history) for _, d in drawn), default=0)
    b = max((len(d.bans) for _, d in drawn), default=0)
    if h > MAX_DEVICE_HISTORY or b > MAX_DRAW_BANS:
        raise ValueError(f"a drawn row has {h} history tokens or {b} bans; the device draw "
                         f"takes {MAX_DEVICE_HISTORY} and {MAX_DRAW_BANS}")
    params = np.zeros((len(drawn), PARAMS), np.float64)
    history = np.zeros((len(drawn), h), np.int32)
    bans = np.full((len(drawn), b), -1, np.int64)
    for k, (_, d) in enumerate(drawn):
        inv_t = 0.0 if d.temperature == 0.0 else float(np.float32(1.0 / d.temperature))
        n = len(d.history)
        params[k] = (inv_t, d.top_k, d.top_p, d.min_p, d.u, float(d.logprob),
                     d.repetition_penalty, d.presence_penalty, d.frequency_penalty,
                     d.num_prompt, n)
        if n:
            history[k, :n] = d.history
        if d.bans:
            bans[k, :len(d.bans)] = d.bans
    return DrawArrays(np.array([i for i, _ in drawn], np.int64), params, history, bans,
                      any(d.logprob for _, d in drawn))


class DrawKernel(RowKernel):
    """The compiled `logits_draw_f32` of one context (compiled at construction)."""

    def __init__(self, context: CudaContext) -> None:
        super().__init__(context, DRAW_SOURCE, DRAW_KERNEL, DRAW_THREADS)

    def launch(self, logits_ptr: int, ptrs: tuple[int, int, int, int], out_ptr: int,
               logprob_ptr: int, arrays: DrawArrays, vocab: int, stream: Stream) -> None:
        """Draw `arrays`' rows (ptrs: their rows, params, history, bans on the device) into out
        / logprob, on `stream`. Edits the drawn logits rows in place."""
        self.launch_rows(len(arrays.rows), [
            ("ptr", logits_ptr), *(("ptr", p) for p in ptrs), ("ptr", out_ptr),
            ("ptr", logprob_ptr), ("i32", vocab), ("i32", arrays.history.shape[1]),
            ("i32", arrays.bans.shape[1])], stream)
