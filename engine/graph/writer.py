"""A small ONNX graph writer: unique value names, inline constants, weights streamed to one
external-data file as they are added (so graphs larger than protobuf's 2 GiB limit build, and
the whole model is never held twice in memory).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

logger = logging.getLogger(__name__)

_ALIGN = 4096  # external tensors start on page boundaries so onnxruntime may mmap them
_INLINE_MAX_BYTES = 1024  # smaller constants stay inside model.onnx
CONCAT_MAX_INPUTS = 32  # inputs of one Concat node (see GraphWriter.concat_capped)


class GraphWriter:
    """Accumulates nodes and initializers; `weight()` appends tensor bytes to the data file.

    `shared`: external tensors already written by another graph of the same build (its
    writer's `external`), referenced where this graph adds a weight of the same name, dtype and
    shape instead of being written twice. Names identify content within one build: every graph
    of a build writes its non-linear weights (embedding, norms, lm_head) by the same code.
    """

    def __init__(self, data_file: BinaryIO, data_location: str,
                 shared: Mapping[str, TensorProto] | None = None) -> None:
        self._data = data_file
        self._location = data_location
        self._offset = 0
        self._count = 0
        self._shared = shared or {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.external: dict[str, TensorProto] = {}  # name -> tensor written to the data file

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """Adds a named initializer; large ones go to the external data file."""
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if array.nbytes <= _INLINE_MAX_BYTES:
            self.initializers.append(_inline_tensor(name, array))
            return name
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        other = self._shared.get(name)
        if other is not None and other.data_type == elem and tuple(other.dims) == array.shape:
            self.initializers.append(TensorProto())
            self.initializers[-1].CopyFrom(other)
            return name
        pad = (-self._offset) % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        self._data.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=elem)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", str(self._offset)),
                           ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        self.external[name] = tensor
        self._offset += array.nbytes
        return name

    def const(self, value: Any, dtype: np.dtype | type, hint: str = "c") -> str:
        """An inline constant (shapes, axes, scalars, small tables)."""
        return self.weight(self.name(hint), np.asarray(value, dtype=dtype))

    def i64(self, value: Any) -> str:
        return self.const(value, np.int64, "i64")

    def concat_capped(self, parts: list[str], axis: int = 0) -> str:
        """Concat in groups of at most CONCAT_MAX_INPUTS (onnxruntime's CUDA Concat refuses more
        inputs inside a captured CUDA graph: 60 for SmolLM2's 30 layers, measured on the H200)."""
        while len(parts) > CONCAT_MAX_INPUTS:
            groups = [parts[i:i + CONCAT_MAX_INPUTS]
                      for i in range(0, len(parts), CONCAT_MAX_INPUTS)]
            parts = [grp[0] if len(grp) == 1 else self.op("Concat", grp, axis=axis)
                     for grp in groups]
        return self.op("Concat", parts, axis=axis)

    def op(self, op_type: str, inputs: list[str], *, outputs: int = 1, domain: str = "",
           name_hint: str | None = None, **attrs: Any) -> str:
        """Adds one node with a single output and returns the output name."""
        return self.op_n(op_type, inputs, outputs=outputs, domain=domain, name_hint=name_hint,
                         **attrs)[0]

    def op_n(self, op_type: str, inputs: list[str], *, outputs: int, domain: str = "",
             name_hint: str | None = None, names: list[str] | None = None,
             **attrs: Any) -> list[str]:
        """Adds one node with `outputs` outputs and returns their names (`names`: fixed ones,
        e.g. graph outputs)."""
        hint = name_hint or op_type.lower()
        outs = list(names) if names is not None else [self.name(hint) for _ in range(outputs)]
        if len(outs) != outputs:
            raise ValueError(f"{op_type}: {len(outs)} output names for {outputs} outputs")
        node = helper.make_node(op_type, inputs, outs, name=self.name(f"n_{op_type}"),
                                domain=domain or None, **attrs)
        self.nodes.append(node)
        return outs

    def op_to(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        """Adds one node whose single output gets a fixed name (graph outputs)."""
        self.nodes.append(helper.make_node(op_type, inputs, [output],
                                           name=self.name(f"n_{op_type}"), **attrs))
        return output


def _inline_tensor(name: str, array: np.ndarray) -> TensorProto:
    tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    tensor.dims.extend(array.shape)
    tensor.raw_data = array.tobytes()
    return tensor


def save_model(writer: GraphWriter, path: Path, *, inputs: list[onnx.ValueInfoProto],
               outputs: list[onnx.ValueInfoProto], opset: int, graph_name: str) -> None:
    """Writes model.onnx (the data file was written by `writer.weight` already)."""
    graph = helper.make_graph(writer.nodes, graph_name, inputs, outputs,
                              initializer=writer.initializers)
    domains = sorted({node.domain for node in writer.nodes} - {""})  # e.g. com.microsoft
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=imports, producer_name="trtserve")
    model.ir_version = 10
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    logger.info("wrote %s: %d nodes, %d initializers", path, len(writer.nodes),
                len(writer.initializers))
