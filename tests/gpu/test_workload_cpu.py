"""The lockstep harness the GPU tests rely on, proven on CPU: the fp16 graph on onnxruntime CPU
stays within the fp16 tolerance of the fp32 graph, and a broken executor is caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.executors.ort import OrtExecutor
from scheduler.plan import StepPlan, StepResult

from .tiny_model import BLOCK_SIZE, TINY, build_graph
from .workload import lockstep

FP16_TOLERANCE = 1e-2  # relative to the largest |logit|; CPU fp16 vs fp32 measures ~1.5e-3


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {d: build_graph(root / d, d) for d in ("float32", "float16")}


def _executor(path: Path, kv_dtype: type = np.float32) -> OrtExecutor:
    return OrtExecutor(path, TINY, num_blocks=64, block_size=BLOCK_SIZE,
                       max_context=TINY.max_position_embeddings, kv_dtype=kv_dtype)


def test_fp16_graph_within_tolerance_of_fp32(graphs: dict[str, Path]) -> None:
    """Prefill (one chunked) + 10 decodes + a block move: fp16 logits track fp32 closely."""
    ref, dut = _executor(graphs["float32"]), _executor(graphs["float16"], np.float16)
    errors = lockstep(ref, dut, vocab=TINY.vocab_size, block_size=BLOCK_SIZE, num_blocks=64)
    assert len(errors) == 12 and max(errors) < FP16_TOLERANCE / 4, errors


class _ForgetfulExecutor(OrtExecutor):
    """Drops block copies: the moved sequence then reads stale (zero) KV."""

    def execute(self, plan: StepPlan) -> StepResult:
        plan.block_copies = []
        return super().execute(plan)


def test_harness_catches_a_lost_block_copy(graphs: dict[str, Path]) -> None:
    """The workload's block move makes an executor that skips block copies fail the bound."""
    ref = _executor(graphs["float32"])
    bad = _ForgetfulExecutor(graphs["float32"], TINY, num_blocks=64, block_size=BLOCK_SIZE,
                             max_context=TINY.max_position_embeddings)
    errors = lockstep(ref, bad, vocab=TINY.vocab_size, block_size=BLOCK_SIZE, num_blocks=64)
    assert max(errors[:4]) < 1e-5 and max(errors[4:]) > FP16_TOLERANCE, errors
