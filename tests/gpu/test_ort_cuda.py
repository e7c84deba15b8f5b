"""onnxruntime CUDA executor (fp16 and bf16 graphs, device pool, NVRTC scatter) vs the CPU
executor (fp32 graph, numpy pool) on a tiny random model: prefill + 10 decode steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.device.cuda import CudaContext
from engine.device.step_io import StepLimits
from engine.executors.ort import OrtExecutor

from .conftest import skip_or_fail
from .tiny_model import BLOCK_SIZE, TINY
from .workload import lockstep, relative_error, single_sequence_plans

pytestmark = pytest.mark.gpu

NUM_BLOCKS = 64
# relative to the largest |logit|: CPU fp16 vs fp32 measures ~1.5e-3; bf16 keeps 8 significant
# bits (the reference evaluator's bf16 run measures ~9e-3, tests/engine/test_bf16_graph.py)
TOLERANCE = {"float16": 1e-2, "bfloat16": 3e-2}
GRAPHS = ("float16", "bfloat16", "float16+decode", "bfloat16+decode")


@pytest.fixture(params=GRAPHS)
def ort_cuda(request: pytest.FixtureRequest, cuda_ctx: CudaContext,
             tiny_graphs: dict[str, Path]) -> Iterator[object]:
    from engine.executors.ort_cuda import OrtCudaExecutor, OrtCudaUnavailableError

    try:
        ex = OrtCudaExecutor(tiny_graphs[request.param], TINY, num_blocks=NUM_BLOCKS,
                             block_size=BLOCK_SIZE, max_context=TINY.max_position_embeddings,
                             limits=StepLimits(64, 8, TINY.max_position_embeddings))
    except OrtCudaUnavailableError as exc:
        skip_or_fail(str(exc))
    yield ex
    ex.close()


def test_single_sequence_steps_match_cpu(ort_cuda: object, cpu_ref: OrtExecutor) -> None:
    """A fresh prompt, its next chunk after a past, a decode step (its bucket), a decode beside
    a prompt, two prompts: the logits of every path (with the decode graph: single-sequence
    steps through it, uncaptured) within the dtype's tolerance of the CPU fp32 graph."""
    tolerance = TOLERANCE[ort_cuda.device_io.geometry.dtype]  # type: ignore[attr-defined]
    for step, plan in enumerate(single_sequence_plans(TINY.vocab_size)):
        want = cpu_ref.execute(plan).logits
        got = ort_cuda.execute(plan).logits  # type: ignore[attr-defined]
        assert relative_error(got, want) < tolerance, step


@pytest.fixture()
def cpu_ref(tiny_graphs: dict[str, Path]) -> Iterator[OrtExecutor]:
    ex = OrtExecutor(tiny_graphs["float32"], TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                     max_context=TINY.max_position_embeddings)
    yield ex
    ex.close()


def test_logits_match_cpu_over_prefill_and_decode(ort_cuda: object, cpu_ref: OrtExecutor) -> None:
    """Every step's logits agree within the dtype's tolerance; the device pool (fp16 or bf16)
    matches the CPU pool."""
    errors = lockstep(cpu_ref, ort_cuda, vocab=TINY.vocab_size,  # type: ignore[arg-type]
                      block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS, decode_steps=10)
    io = ort_cuda.device_io  # type: ignore[attr-defined]
    tolerance = TOLERANCE[io.geometry.dtype]
    assert len(errors) == 12
    assert max(errors) < tolerance, errors
    pool = np.empty(io.geometry.shape, dtype=io.geometry.np_dtype)
    io.pool.buffer.copy_to_host(pool, io.stream)
    io.stream.synchronize()
    want = cpu_ref.pool.data
    assert np.abs(pool.astype(np.float32) - want).max() < tolerance * np.abs(want).max()


def test_executor_contract(ort_cuda: object) -> None:
    """Executor properties, over-limit plans refused, close() idempotent."""
    from scheduler.plan import ScheduledSeq, StepPlan

    assert ort_cuda.block_size == BLOCK_SIZE  # type: ignore[attr-defined]
    assert ort_cuda.num_blocks == NUM_BLOCKS  # type: ignore[attr-defined]
    assert ort_cuda.vocab_size == TINY.vocab_size  # type: ignore[attr-defined]
    too_many = StepPlan(0, [ScheduledSeq(0, list(range(65)), 0, list(range(17)), True)])
    with pytest.raises(ValueError, match="max_num_tokens"):
        ort_cuda.execute(too_many)  # type: ignore[attr-defined]
    empty = ort_cuda.execute(StepPlan(1, [], [(0, 1)]))  # type: ignore[attr-defined]
    assert empty.logits.shape == (0, TINY.vocab_size)
    ort_cuda.close()  # type: ignore[attr-defined]
    ort_cuda.close()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="after close"):
        _ = ort_cuda.num_blocks  # type: ignore[attr-defined]
