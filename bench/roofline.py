"""The fp32 matmul roofline of one decode step: an onnxruntime graph of nothing but the model's
weight matmuls (per layer qkv, o, gate, up, down; then the lm_head), random weights of the same
shapes, each output reduced to a scalar. Its time per run is what a step would cost if attention,
norms, activations and host work were free, on this machine, right now; engine benches report
their step time as a fraction of it, measured in the same run, so that the host's speed of the
moment cancels out.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

from engine.config import ModelConfig
from engine.executors.ort import session_options


def weight_shapes(config: ModelConfig) -> list[tuple[int, int]]:
    """[in, out] of every weight matmul of one decode step, in execution order."""
    hd, d = config.hidden_size, config.head_dim
    q, kv, ffn = config.num_heads * d, config.num_kv_heads * d, config.intermediate_size
    layer = [(hd, q + 2 * kv), (q, hd), (hd, ffn), (hd, ffn), (ffn, hd)]
    return layer * config.num_layers + [(hd, config.vocab_size)]


class MatmulRoofline:
    """One onnxruntime session over the model's weight matmuls; `step_s(rows)` times one run."""

    def __init__(self, config: ModelConfig, threads: int | None = None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        shapes = weight_shapes(config)
        self._widths = sorted({k for k, _ in shapes})
        nodes, inits = [], []
        for i, (k, n) in enumerate(shapes):
            w = rng.standard_normal((k, n), dtype=np.float32) * 0.02
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{i}"], [f"y{i}"]))
            nodes.append(helper.make_node("ReduceSum", [f"y{i}"], [f"r{i}"], keepdims=0))
        nodes.append(helper.make_node("Sum", [f"r{i}" for i in range(len(shapes))], ["out"]))
        vi = helper.make_tensor_value_info
        graph = helper.make_graph(
            nodes, "matmul_roofline", [vi(f"x{k}", 1, ["M", k]) for k in self._widths],
            [vi("out", 1, [])], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 10
        self._session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                             providers=["CPUExecutionProvider"])
        self._rng = rng

    def step_s(self, rows: int) -> float:
        """Wall time of one run with `rows` rows (tokens) through every matmul."""
        feeds = {f"x{k}": self._rng.standard_normal((rows, k), dtype=np.float32)
                 for k in self._widths}
        t0 = time.perf_counter()
        self._session.run(None, feeds)
        return time.perf_counter() - t0

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
