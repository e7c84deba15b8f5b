"""The new_kv Concat stays within onnxruntime's CUDA-graph limit of 32 inputs per Concat node,
and the grouped form computes the same concatenation (SmolLM2 has 60 K/V parts)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from engine.graph.writer import CONCAT_MAX_INPUTS, GraphWriter


def _concat_model(n: int) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    g = GraphWriter(io.BytesIO(), "unused.data")
    names = [f"x{i}" for i in range(n)]
    out = g.concat_capped(names)
    g.nodes.append(helper.make_node("Identity", [out], ["y"]))
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 2]) for x in names]
    graph = helper.make_graph(g.nodes, "concat", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), g.nodes


def test_no_concat_node_exceeds_the_capture_limit_and_order_is_kept() -> None:
    for n in (1, 31, 32, 33, 60, 1100):
        model, nodes = _concat_model(n)
        widths = [len(node.input) for node in nodes if node.op_type == "Concat"]
        assert widths and max(widths) <= CONCAT_MAX_INPUTS, (n, widths)
        feeds = {f"x{i}": np.full((1, 2), i, np.float32) for i in range(n)}
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, feeds)
        np.testing.assert_array_equal(y[:, 0], np.arange(n, dtype=np.float32))
