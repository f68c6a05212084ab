"""Read back from a built graph what quantisation it really holds (not what was asked for)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import helper


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _nbytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if t.dims else 1
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def quantization_report(model: onnx.ModelProto) -> dict[str, Any]:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    ops = Counter(n.op_type for n in graph.node)
    groups: dict[tuple, int] = defaultdict(int)
    for n in graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            a = _attrs(n)
            key = (n.op_type, a.get("bits", 4), a.get("block_size"), a.get("accuracy_level", 0),
                   len(n.input) > 3 and bool(n.input[3]))
            groups[key] += 1
    weight_ops = [
        {"op": k[0], "bits": k[1], "block_size": k[2], "accuracy_level": k[3], "zero_points": k[4], "count": c}
        for k, c in sorted(groups.items())
    ]
    float_matmuls = sum(
        1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    )
    by_dtype: dict[str, int] = defaultdict(int)
    for t in graph.initializer:
        by_dtype[helper.tensor_dtype_to_np_dtype(t.data_type).name] += _nbytes(t)
    return {
        "weight_ops": weight_ops,
        "float_weight_matmuls": float_matmuls,
        "embedding": _embedding_kind(graph, inits),
        "lm_head_last_position_only": any(n.name.startswith("/lm_head/prune") for n in graph.node),
        "initializer_bytes": dict(sorted(by_dtype.items())),
        "op_counts": dict(sorted(ops.items())),
    }


def _embedding_kind(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> dict[str, Any]:
    producers = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type in ("Gather", "GatherBlockQuantized") and "input_ids" in n.input:
            src, hops = n.input[0], 0
            while src not in inits and src in producers and hops < 4:
                src, hops = producers[src].input[0], hops + 1
            consumers = [m for m in graph.node if src in m.input and m is not n]
            shared = any(m.op_type in ("MatMul", "MatMulNBits") for m in consumers)
            return {"op": n.op_type, "bits": _attrs(n).get("bits"), "shared_with_lm_head": shared, "weight": src}
    return {"op": None, "shared_with_lm_head": False}
