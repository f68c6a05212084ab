"""A small helper for writing ONNX graphs by hand: unique names, constants, nodes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # ReduceMean still takes ``axes`` as an attribute (NNAPI needs them constant)


class GraphWriter:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def input(self, name: str, dtype: int, shape: Sequence[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, value: str, name: str, dtype: int, shape: Sequence[int]) -> None:
        if value != name:
            self.op("Identity", [value], name=name)
        self.outputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, values: Any, dtype: type = np.int64) -> str:
        """A small constant (shapes, axes, scalars), shared between nodes that ask for the same one."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(self._fresh("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, node_name: str | None = None,
           **attrs: Any) -> str:
        """Add a node; ``name`` names its output, ``node_name`` the node (profiles refer to nodes by it)."""
        out = name or self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name or f"n_{out}", **attrs))
        return out

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeqwen")
        model.ir_version = 8  # readable by onnxruntime releases back to 1.14 (Android apps pin old versions)
        return model


FLOAT = TensorProto.FLOAT
INT32 = TensorProto.INT32
