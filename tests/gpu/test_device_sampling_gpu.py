"""Greedy sampling on the GPU: the NVRTC `logits_pick_f32` kernel against numpy's argmax over
random fp32 rows (SmolLM2's vocabulary width, ties, NaN, bans, a fully banned row), and the tiny
model's greedy tokens picked on the device equal to those picked on the host from the logits,
with CUDA graphs on and off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.device.cuda import CudaContext, Stream
from engine.device.memory import DeviceBuffer
from engine.device.sampling import PickKernel
from engine.limits import StepLimits

from .conftest import skip_or_fail
from .tiny_model import BLOCK_SIZE, TINY
from .workload import greedy_tokens

pytestmark = pytest.mark.gpu

VOCAB = 49152


@pytest.fixture(scope="module")
def picker(cuda_ctx: CudaContext) -> Iterator[PickKernel]:
    kernel = PickKernel(cuda_ctx)
    yield kernel
    kernel.close()


def _pick(picker: PickKernel, stream: Stream, logits: np.ndarray, bans: np.ndarray) -> list[int]:
    rows = logits.shape[0]
    with DeviceBuffer(logits.nbytes) as x, DeviceBuffer(max(bans.nbytes, 8)) as b, \
            DeviceBuffer(rows * 8) as out:
        x.copy_from_host(logits, stream)
        if bans.size:
            b.copy_from_host(bans, stream)
        picker.launch(x.ptr, b.ptr, out.ptr, rows, logits.shape[1], bans.shape[1], stream)
        got = np.empty(rows, np.int64)
        out.copy_to_host(got, stream)
        stream.synchronize()
    return got.tolist()


@pytest.mark.parametrize("rows", [1, 7, 256])
def test_pick_equals_numpy_argmax(picker: PickKernel, stream: Stream, rows: int) -> None:
    rng = np.random.default_rng(rows)
    logits = (rng.standard_normal((rows, VOCAB)) * 4).astype(np.float32)
    logits[0, [5, 77, 40000]] = 50.0  # a tie: the lowest id wins, as numpy
    assert _pick(picker, stream, logits, np.zeros((rows, 0), np.int64)) == np.argmax(
        logits, axis=1).tolist()


def test_pick_skips_bans(picker: PickKernel, stream: Stream) -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, VOCAB)).astype(np.float32)
    order = np.argsort(-logits, axis=1)
    bans = np.full((4, 3), -1, np.int64)
    bans[0, :2] = order[0, :2]  # the two best: the third wins
    bans[1, 0] = VOCAB + 5  # past the vocabulary: nothing banned
    logits[2, 9] = np.nan  # NaN counts as +inf
    logits[3, :] = -np.inf  # nothing finite: id 0, as numpy's argmax
    assert _pick(picker, stream, logits, bans) == [int(order[0, 2]), int(order[1, 0]), 9, 0]


@pytest.mark.parametrize("graphs", [False, True])
def test_device_picks_equal_host_picks(cuda_ctx: CudaContext, tiny_graphs: dict[str, Path],
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
        prompts = [rng.integers(1, TINY.vocab_size, 3 + i).tolist() for i in range(5)]
        want, _ = greedy_tokens(ex, prompts, block_size=BLOCK_SIZE, steps=8)
        got, _ = greedy_tokens(ex, prompts, block_size=BLOCK_SIZE, steps=8, host_logits=False,
                               first_block=64)
        assert got == want
    finally:
        ex.close()
