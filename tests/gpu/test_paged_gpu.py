"""The paged decode graph (engine/graph/paged.py) on the GPU: decode buckets that read and
write the KV pool in place through ONNX Runtime's PagedAttention, against the CPU executor
(fp32 graph, numpy pool) on the tiny model with 16-token blocks (the op's smallest; the
server's default) and 32-token blocks: every
step's logits, and the pool after prefill, chunked prefill, a block-boundary crossing, a
copy-on-write move and ten decode steps; captured and uncaptured buckets. Prefill and mixed
steps run the paged prefill graph, decode steps the paged decode buckets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.device.cuda import CudaContext
from engine.device.step_io import StepLimits
from engine.executors.ort import OrtExecutor
from engine.graph.paged import PAGED_MODEL_FILE

from .conftest import skip_or_fail
from .tiny_model import TINY, build_graph
from .workload import lockstep, relative_error, single_sequence_plans

pytestmark = pytest.mark.gpu

NUM_BLOCKS = 32
TOLERANCE = {"float16": 1e-2, "bfloat16": 3e-2}  # as tests/gpu/test_ort_cuda.py


@pytest.fixture(scope="module", params=[16, 32])
def block(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory, block: int) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"paged{block}")
    out = {"float32": build_graph(root / "float32", "float32", block_size=block)}
    for dtype in ("float16", "bfloat16"):
        out[dtype] = build_graph(root / dtype, dtype, rotary_op=True, block_size=block)
        assert (out[dtype].parent / PAGED_MODEL_FILE).is_file()
    return out


@pytest.fixture()
def cpu_ref(graphs: dict[str, Path], block: int) -> Iterator[OrtExecutor]:
    ex = OrtExecutor(graphs["float32"], TINY, num_blocks=NUM_BLOCKS, block_size=block,
                     max_context=TINY.max_position_embeddings)
    yield ex
    ex.close()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("captured", [True, False])
def test_paged_decode_matches_cpu(cuda_ctx: CudaContext, graphs: dict[str, Path],
                                  cpu_ref: OrtExecutor, block: int, dtype: str,
                                  captured: bool) -> None:
    from engine.executors.ort_cuda import OrtCudaExecutor, OrtCudaUnavailableError

    try:
        ex = OrtCudaExecutor(graphs[dtype], TINY, num_blocks=NUM_BLOCKS, block_size=block,
                             max_context=TINY.max_position_embeddings,
                             limits=StepLimits(64, 8, TINY.max_position_embeddings),
                             cuda_graphs=captured)
    except OrtCudaUnavailableError as exc:
        skip_or_fail(str(exc))
    try:
        errors = lockstep(cpu_ref, ex, vocab=TINY.vocab_size, block_size=block,
                          num_blocks=NUM_BLOCKS, decode_steps=10)
        assert len(errors) == 12 and max(errors) < TOLERANCE[dtype], errors
        assert ex.paged_runs >= 12, "steps did not run the paged graphs"
        # every decode step, and the decode part of the mixed steps, replayed when captured
        assert ex.graph_replays >= 10 if captured else ex.graph_replays == 0
        io = ex.device_io
        pool = np.empty(io.geometry.shape, dtype=io.geometry.np_dtype)
        io.pool.buffer.copy_to_host(pool, io.stream)
        io.stream.synchronize()
        want = cpu_ref.pool.data
        assert np.abs(pool.astype(np.float32) - want).max() < TOLERANCE[dtype] * np.abs(want).max()
    finally:
        ex.close()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_paged_prefill_of_single_sequences_matches_cpu(
        cuda_ctx: CudaContext, graphs: dict[str, Path], cpu_ref: OrtExecutor, block: int,
        dtype: str) -> None:
    """A fresh prompt, its next chunk after a past, a decode step, a decode beside a prompt,
    two prompts: through the paged graphs, within the dtype's tolerance of the CPU graph."""
    from engine.executors.ort_cuda import OrtCudaExecutor

    ex = OrtCudaExecutor(graphs[dtype], TINY, num_blocks=NUM_BLOCKS, block_size=block,
                         max_context=TINY.max_position_embeddings,
                         limits=StepLimits(64, 8, TINY.max_position_embeddings), cuda_graphs=True)
    try:
        plans = single_sequence_plans(TINY.vocab_size)
        for step, plan in enumerate(plans):
            want = cpu_ref.execute(plan).logits
            got = ex.execute(plan).logits
            assert relative_error(got, want) < TOLERANCE[dtype], step
        assert ex.paged_runs >= len(plans)
    finally:
        ex.close()
