"""Every node of a DirectML artifact must have a DirectML kernel in onnxruntime's own list.

The list (edgeqwen/compiler/data/dml_kernels.tsv) is derived by tools/dml_kernel_list.py from the
DmlExecutionProvider section of onnxruntime's docs/OperatorKernels.md, a file onnxruntime generates
from its registered kernels (tools/python/gen_opkernel_doc.py). A node passes when its domain and
op have a kernel whose opset range holds the node's schema version and, where the node's first
input type is known, whose type list has that type. A node without a kernel fails the build: DML
would fall back to the CPU for it, copying tensors across the bus on every token.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path
from typing import Any

from edgeqwen.artifact import RuntimeSpec

KERNELS = Path(__file__).resolve().parents[1] / "data" / "dml_kernels.tsv"
_ELEM = {1: "float", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64", 2: "uint8", 3: "int8", 9: "bool",
         11: "double", 21: "uint4", 22: "int4"}


def load_kernels(path: Path = KERNELS) -> tuple[dict[tuple[str, str], list[tuple[int, int, set[str]]]], dict[str, str]]:
    """{(domain, op): [(first, last, types)]} and the file's provenance header (``# key: value`` lines)."""
    kernels: dict[tuple[str, str], list[tuple[int, int, set[str]]]] = {}
    meta = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            if ":" in line:
                k, v = line[1:].split(":", 1)
                meta[k.strip()] = v.strip()
            continue
        if not line.strip():
            continue
        domain, op, versions, types = line.split("\t")
        kernels.setdefault((domain, op), []).append((*_range(versions), set(filter(None, types.split(",")))))
    return kernels, meta


def _range(text: str) -> tuple[int, int]:
    """'13+' -> (13, inf), '[7, 12]' -> (7, 12), '11' -> (11, 11)."""
    text = text.strip()
    if m := re.fullmatch(r"(\d+)\+", text):
        return int(m.group(1)), 10**9
    if m := re.fullmatch(r"\[(\d+),\s*(\d+)\]", text):
        return int(m.group(1)), int(m.group(2))
    return int(text), int(text)


@functools.lru_cache(maxsize=1)
def _ort_schemas() -> dict[tuple[str, str], list[int]]:
    """onnxruntime's schema versions by (domain, op), read once per process."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    versions: dict[tuple[str, str], list[int]] = {}
    for schema in ort_c.get_all_operator_schema():
        versions.setdefault((schema.domain, schema.name), []).append(schema.since_version)
    return versions


def _since_version(op: str, domain: str, opset: int) -> int:
    """The schema version a node resolves to: onnx's own schemas, else onnxruntime's (which registers
    some ops in the ai.onnx domain, e.g. SimplifiedLayerNormalization, and its contrib ops)."""
    import onnx.defs

    if domain in ("", "ai.onnx"):
        try:
            return onnx.defs.get_schema(op, opset, "").since_version
        except onnx.defs.SchemaError:
            pass
    known = _ort_schemas().get(("" if domain == "ai.onnx" else domain, op), [])
    return max((v for v in known if v <= opset), default=1)


def check_model(model, kernels) -> dict[str, Any]:
    import onnx

    graph = model.graph
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # contrib ops the onnx package does not know stop inference early; types stay partial
        inferred = model
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(graph.input) + list(graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    missing: Counter = Counter()
    wrong_type: Counter = Counter()
    typed = 0
    constant = {t.name for t in graph.initializer}
    for node in graph.node:
        domain = node.domain or "ai.onnx"
        if node.op_type == "Constant" and domain == "ai.onnx":
            continue  # folded into an initializer when the session loads
        if node.input and all(i in constant for i in node.input if i):
            constant.update(node.output)  # a constant subgraph (the rotary tables): folded on the CPU at load
            continue
        version = _since_version(node.op_type, node.domain, opsets.get(domain, 1))
        rows = [r for r in kernels.get((domain, node.op_type), []) if r[0] <= version <= r[1]]
        if not rows:
            missing[f"{domain}:{node.op_type}(v{version})"] += 1
            continue
        elem = _ELEM.get(types.get(node.input[0], 0)) if node.input and node.input[0] else None
        if elem is None:
            continue
        typed += 1
        if not any(elem in r[2] for r in rows):
            wrong_type[f"{domain}:{node.op_type}({elem})"] += 1
    return {"nodes": len(graph.node), "nodes_type_checked": typed, "missing": dict(missing),
            "unsupported_types": dict(wrong_type), "op_counts": dict(Counter(
                f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in graph.node))}


def run(folder: Path, runtime: RuntimeSpec) -> dict[str, Any]:
    import onnx

    kernels, meta = load_kernels()
    model = onnx.load(str(folder / runtime.model_file), load_external_data=False)
    result = check_model(model, kernels)
    if result["missing"] or result["unsupported_types"]:
        problems = [f"{k} x{v}" for k, v in {**result["missing"], **result["unsupported_types"]}.items()]
        raise RuntimeError("the graph has nodes without a DirectML kernel in onnxruntime's list "
                           f"({meta.get('source', KERNELS.name)}): {', '.join(problems)}")
    ops = len(result["op_counts"])
    return {**result, "kernel_list": meta,
            "summary": f"all {result['nodes']} nodes ({ops} op types) have DirectML kernels; "
                       f"input type checked for {result['nodes_type_checked']}"}
