"""The ONNX Runtime CUDA backend builds its graphs with RoPE as the opset-23 RotaryEmbedding op
(one kernel per Q and K). On CPU: the half-precision graph with the op gives the decomposed
graph's logits (fp16 noise) and greedy tokens, through the device executor on the fake device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from engine.backends import ORT_CPU, ORT_CUDA, TENSORRT
from engine.executors import ort_cuda
from engine.limits import StepLimits

from .tiny_model import BLOCK_SIZE, TINY, build_graph
from .workload import greedy_tokens


def test_only_onnxruntime_cuda_asks_for_the_op() -> None:
    assert ORT_CUDA.rotary_op and not TENSORRT.rotary_op and not ORT_CPU.rotary_op


def test_rotary_op_graph_equals_decomposed(fake_host_ort: object, tmp_path: Path) -> None:
    graphs = {op: build_graph(tmp_path / str(op), "float16", rotary_op=op)
              for op in (False, True)}
    ops = {op: {n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node}
           for op, p in graphs.items()}
    assert "RotaryEmbedding" in ops[True] and "RotaryEmbedding" not in ops[False]
    runs = {}
    for op, path in graphs.items():
        ex = ort_cuda.OrtCudaExecutor(path, TINY, num_blocks=64, block_size=BLOCK_SIZE,
                                      max_context=TINY.max_position_embeddings,
                                      limits=StepLimits(64, 4, TINY.max_position_embeddings))
        try:
            runs[op] = greedy_tokens(ex, [[1, 2, 3, 4, 5], [6, 7]], block_size=BLOCK_SIZE,
                                     steps=6)
        finally:
            ex.close()
    assert runs[True][0] == runs[False][0]
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2 * np.abs(b).max())
