"""Store tied embeddings once: the input embedding reads the lm_head's weights.

Olive's ModelBuilder pass (0.13) replaces the builder's embedding code and, with it, the builder's
tied-embedding sharing, so a tied checkpoint comes out with two copies of the 151,936 x hidden
table (for Qwen2.5-0.5B: 136 MB of fp32 embedding next to the int4 lm_head).

lm_head as MatMulNBits: B is [V, K/block, block*bits/8] uint8 and scales [V * K/block], quantised
along K (= hidden) per output row v, i.e. per embedding row: exactly GatherBlockQuantized's data with
quantize_axis=2 (blocks of ``block`` values along the last axis) and scales [V, K/block, 1].

An asymmetric lm_head (zero points) adds one: its zero points unpacked to one byte per block [V, K/block, 1].

lm_head as float MatMul: its weight is E^T [H, V]; the embedding becomes Gather(Transpose(W)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS = "com.microsoft"


def _producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _find_lm_head(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> onnx.NodeProto:
    logits = graph.output[0].name
    node = _producer_map(graph).get(logits)
    if node is None or node.op_type not in ("MatMul", "MatMulNBits"):
        raise RuntimeError(f"logits are produced by {node.op_type if node else 'nothing'}, not a MatMul")
    if node.input[1] not in inits:
        raise RuntimeError("lm_head weight is not an initializer")
    return node


def _find_embedding(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> onnx.NodeProto:
    for node in graph.node:
        if node.op_type in ("Gather", "GatherBlockQuantized") and "input_ids" in node.input and node.input[0] in inits:
            return node
    raise RuntimeError("no embedding Gather on input_ids found")


def _const(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _attr(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def run(model: onnx.ModelProto, ctx) -> dict[str, Any]:
    if not ctx.tied_embeddings:
        return {"applied": False, "reason": "checkpoint has separate lm_head weights"}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    head = _find_lm_head(graph, inits)
    emb = _find_embedding(graph, inits)
    old_inputs = [i for i in emb.input if i in inits]
    idx = list(graph.node).index(emb)
    out = emb.output[0]

    if head.op_type == "MatMulNBits":
        bits, block, k, n = (_attr(head, a) for a in ("bits", "block_size", "K", "N"))
        if k % block:
            return {"applied": False, "reason": f"hidden {k} is not a multiple of block {block}"}
        kb = k // block
        gather_inputs = [head.input[1], "input_ids", "/edgeqwen/tied/scales"]
        zero_inits: list[onnx.TensorProto] = []
        if len(head.input) > 3 and head.input[3]:
            # asymmetric (k-quant): MatMulNBits packs the zero points two a byte along K/block, the gather
            # reads one byte per block beside its [V, K/block, 1] scales: a small unpacked copy (V * K/block)
            packed = numpy_helper.to_array(inits[head.input[3]]).reshape(n, -1)
            zero = packed if bits == 8 else np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)
            zero_inits = [numpy_helper.from_array(np.ascontiguousarray(zero[:, :kb]).reshape(n, kb, 1),
                                                  "/edgeqwen/tied/zero_points")]
            gather_inputs.append("/edgeqwen/tied/zero_points")
        # GatherBlockQuantized reads B as it is ([V, K/block, block*bits/8], quantised along the last
        # axis), so no reshaped copy of the big table exists even after constant folding (an ORT-format
        # conversion folds a Reshape of an initializer into a second initializer). Only the scales
        # ([V * K/block] -> [V, K/block, 1], 1/(2*block/bits) of the table) are reshaped.
        new_nodes = [
            helper.make_node("Reshape", [head.input[2], "/edgeqwen/tied/scale_shape"], ["/edgeqwen/tied/scales"],
                             name="/edgeqwen/tied/ReshapeScales"),
            helper.make_node("GatherBlockQuantized", gather_inputs, ["/edgeqwen/tied/blocks"], name="/model/embed_tokens/GatherBlockQuantized", domain=MS,
                             bits=bits, block_size=block, gather_axis=0, quantize_axis=2),
            # [batch, seq, K/block, block] -> [batch, seq, K]
            helper.make_node("Reshape", ["/edgeqwen/tied/blocks", "/edgeqwen/tied/hidden_shape"], [out],
                             name="/edgeqwen/tied/ReshapeHidden"),
        ]
        consts = [_const("/edgeqwen/tied/scale_shape", [n, kb, 1]),
                  _const("/edgeqwen/tied/hidden_shape", [0, 0, k]), *zero_inits]
        kind = f"GatherBlockQuantized on the lm_head's {bits}-bit weights"
    else:
        w = inits[head.input[1]]
        e = inits[emb.input[0]] if emb.op_type == "Gather" else None
        if e is not None and tuple(e.dims) != tuple(reversed(w.dims)):
            raise RuntimeError(f"embedding {tuple(e.dims)} is not the transpose of lm_head {tuple(w.dims)}")
        new_nodes = [
            helper.make_node("Transpose", [head.input[1]], ["/edgeqwen/tied/embedding"], perm=[1, 0],
                             name="/edgeqwen/tied/Transpose"),
            helper.make_node("Gather", ["/edgeqwen/tied/embedding", "input_ids"], [out],
                             name="/model/embed_tokens/Gather", axis=0),
        ]
        consts = []
        kind = "Gather on the transposed float lm_head weight"

    graph.node.remove(emb)
    for j, node in enumerate(new_nodes):
        graph.node.insert(idx + j, node)
    graph.initializer.extend(consts)
    used = {i for node in graph.node for i in node.input}
    freed = 0
    for name in old_inputs:
        if name not in used:
            t = inits[name]
            freed += _tensor_bytes(t)
            graph.initializer.remove(t)
    return {"applied": True, "embedding": kind, "bytes_saved": freed}


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if t.dims else 1
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
