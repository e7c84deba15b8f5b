"""Decode steps replayed as CUDA graphs by the onnxruntime CUDA executor, on the GPU: at every
batch bucket (1, 2, 4, 8 and padded 3 and 5 rows) the greedy tokens through replay equal the
uncaptured path's, token for token, and the buckets really were captured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.device.cuda import CudaContext
from engine.limits import StepLimits

from .conftest import skip_or_fail
from .tiny_model import BLOCK_SIZE, TINY
from .workload import greedy_tokens

pytestmark = pytest.mark.gpu

NUM_BLOCKS = 128


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_replayed_decode_equals_uncaptured(cuda_ctx: CudaContext, tiny_graphs: dict[str, Path],
                                           dtype: str) -> None:
    from engine.executors.ort_cuda import OrtCudaExecutor, OrtCudaUnavailableError

    def executor(graphs: bool) -> OrtCudaExecutor:
        return OrtCudaExecutor(tiny_graphs[dtype], TINY, num_blocks=NUM_BLOCKS,
                               block_size=BLOCK_SIZE, max_context=TINY.max_position_embeddings,
                               limits=StepLimits(64, 8, TINY.max_position_embeddings),
                               cuda_graphs=graphs)

    try:
        plain, captured = executor(False), executor(True)
    except OrtCudaUnavailableError as exc:
        skip_or_fail(str(exc))
    rng = np.random.default_rng(3)
    try:
        for batch in (1, 2, 3, 4, 5, 8):
            prompts = [rng.integers(1, TINY.vocab_size, 3 + i).tolist() for i in range(batch)]
            want, _ = greedy_tokens(plain, prompts, block_size=BLOCK_SIZE, steps=8)
            before = captured.graph_replays
            got, _ = greedy_tokens(captured, prompts, block_size=BLOCK_SIZE, steps=8)
            assert got == want, f"batch {batch}"
            assert captured.graph_replays - before == 8, f"batch {batch} was not replayed"
        assert captured._graphs is not None and {b.batch for b in captured._graphs.buckets} == {
            1, 2, 4, 8}
    finally:
        plain.close()
        captured.close()
