"""Give graph inputs/outputs back the names genai_config.json promises.

Olive's block-wise RTN pass renames the output of every MatMul it quantises (``logits`` becomes
``logits_Q4``); when the lm_head is that MatMul, onnxruntime-genai can no longer find its logits.
"""

from __future__ import annotations

import re
from typing import Any

import onnx

_QSUFFIX = re.compile(r"_Q\d+$")


def _expected_outputs(genai_config: dict[str, Any]) -> set[str]:
    outputs = genai_config["model"]["decoder"]["outputs"]
    return {v for k, v in outputs.items() if "%d" not in v}


def run(model: onnx.ModelProto, ctx) -> dict[str, Any]:
    expected = _expected_outputs(ctx.genai_config)
    renames = {}
    for out in model.graph.output:
        if out.name in expected:
            continue
        base = _QSUFFIX.sub("", out.name)
        if base in expected:
            renames[out.name] = base
    for node in model.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for out in model.graph.output:
        out.name = renames.get(out.name, out.name)
    missing = expected - {o.name for o in model.graph.output}
    if missing:
        raise RuntimeError(f"graph lacks output(s) {sorted(missing)} that genai_config.json names")
    return {"renamed": renames}
