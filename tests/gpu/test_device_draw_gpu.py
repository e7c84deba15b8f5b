"""Sampled, penalised and log-prob rows drawn on the GPU: the NVRTC `logits_draw_f32` kernel
against the host reference (scheduler/sampling.py `host_draw`) over random fp32 rows of
SmolLM2's vocabulary width (every cut: temperature, top_k, top_p within top_k, min_p; edits:
repetition penalty, presence/frequency, bans; greedy rows; a NaN row), and the tiny model's
drawn tokens equal to those drawn on the host from the same logits, CUDA graphs on and off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.device.cuda import CudaContext, Stream
from engine.device.draw_kernel import DrawKernel, draw_arrays
from engine.device.memory import DeviceBuffer
from engine.limits import StepLimits
from scheduler.plan import DeviceDraw, ScheduledSeq
from scheduler.request import SamplingParams
from scheduler.sampling import host_draw

from .conftest import skip_or_fail
from .draw_workload import KINDS, drawn_tokens, make_draw
from .tiny_model import BLOCK_SIZE, TINY

pytestmark = pytest.mark.gpu

VOCAB = 49152
CUTS = (SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.3, top_k=50), SamplingParams(temperature=0.9, min_p=0.05),
        SamplingParams(temperature=1.1, top_k=200, top_p=0.8, min_p=0.01),
        SamplingParams(temperature=2.0, top_p=0.99), SamplingParams(temperature=0.5, top_k=1))


@pytest.fixture(scope="module")
def drawer(cuda_ctx: CudaContext) -> Iterator[DrawKernel]:
    kernel = DrawKernel(cuda_ctx)
    yield kernel
    kernel.close()


def _draw(drawer: DrawKernel, stream: Stream, logits: np.ndarray,
          draws: list[DeviceDraw]) -> tuple[list[int], np.ndarray]:
    rows = [ScheduledSeq(i, [1], 0, [0], True, False, (), d) for i, d in enumerate(draws)]
    packed = draw_arrays(rows)
    arrays = (packed.rows, packed.params, packed.history, packed.bans)
    n = len(draws)
    bufs = [DeviceBuffer(max(a.nbytes, 8)) for a in (logits, *arrays)]
    out, lp = DeviceBuffer(n * 8), DeviceBuffer(n * 8)
    try:
        for buf, a in zip(bufs, (logits, *arrays), strict=True):
            if a.nbytes:
                buf.copy_from_host(a, stream)
        ptrs = (bufs[1].ptr, bufs[2].ptr, bufs[3].ptr, bufs[4].ptr)
        drawer.launch(bufs[0].ptr, ptrs, out.ptr, lp.ptr, packed, logits.shape[1], stream)
        tokens, lps = np.empty(n, np.int64), np.empty(n, np.float64)
        out.copy_to_host(tokens, stream)
        lp.copy_to_host(lps, stream)
        stream.synchronize()
    finally:
        for buf in (*bufs, out, lp):
            buf.close()
    return tokens.tolist(), lps


def _rows(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return (rng.standard_normal((n, VOCAB)) * scale).astype(np.float32)


@pytest.mark.parametrize("scale", [2.0, 6.0])  # flat and peaked rows
def test_draw_equals_host_reference(drawer: DrawKernel, stream: Stream, scale: float) -> None:
    rng = np.random.default_rng(int(scale))
    draws, logits = [], []
    history = rng.integers(0, VOCAB, 300).tolist()
    for params in (*CUTS, *KINDS):
        for _ in range(24):
            draws.append(make_draw(params, history, 200, float(rng.random())))
    logits = _rows(rng, len(draws), scale)
    got, lps = _draw(drawer, stream, logits.copy(), draws)
    want = [host_draw(row, d) for row, d in zip(logits, draws, strict=True)]
    assert got == [t for t, _ in want]
    for k, (_, lp) in enumerate(want):
        if lp is not None:
            assert lps[k] == pytest.approx(lp, rel=1e-9, abs=1e-9)


def test_draw_edge_rows(drawer: DrawKernel, stream: Stream) -> None:
    rng = np.random.default_rng(9)
    logits = _rows(rng, 4, 3.0)
    logits[0, 17] = np.nan  # not finite: argmax with NaN as +inf
    logits[1, :] = -np.inf  # nothing finite: id 0
    logits[2, 5] = logits[2, 6] = 80.0  # a tie at the top: top_k 1 keeps both
    logits[3, :] = 0.0  # flat: the draw is u * vocab
    d = DeviceDraw(1.0, 0, 0.9, 0.0, 0.5)
    draws = [d, d, DeviceDraw(1.0, 1, 1.0, 0.0, 0.75), DeviceDraw(1.0, 0, 1.0, 0.0, 0.5)]
    got, _ = _draw(drawer, stream, logits.copy(), draws)
    assert got == [17, 0, 6, VOCAB // 2]
    assert got == [host_draw(row, d)[0] for row, d in zip(logits, draws, strict=True)]


@pytest.mark.parametrize("graphs", [False, True])
def test_device_draws_equal_host_draws(cuda_ctx: CudaContext, tiny_graphs: dict[str, Path],
                                       graphs: bool) -> None:
    from engine.executors.ort_cuda import OrtCudaExecutor, OrtCudaUnavailableError

    try:
        ex = OrtCudaExecutor(tiny_graphs["float16"], TINY, num_blocks=128, block_size=BLOCK_SIZE,
                             max_context=TINY.max_position_embeddings,
                             limits=StepLimits(64, 8, TINY.max_position_embeddings),
                             cuda_graphs=graphs)
    except OrtCudaUnavailableError as exc:
        skip_or_fail(str(exc))
    try:
        rng = np.random.default_rng(5)
        prompts = [rng.integers(1, TINY.vocab_size, 3 + i).tolist() for i in range(7)]
        want = drawn_tokens(ex, prompts, block_size=BLOCK_SIZE, steps=8, on_device=False,
                            late=True)
        got = drawn_tokens(ex, prompts, block_size=BLOCK_SIZE, steps=8, on_device=True,
                           late=True)
        assert got[0] == want[0]
        for g, w in zip(got[1], want[1], strict=True):
            assert g == pytest.approx(w, rel=1e-9, abs=1e-9)
    finally:
        ex.close()
