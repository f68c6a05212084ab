"""A profile's Olive passes read as a streaming export plan.

The profile keeps naming Olive's passes (what to compute); the streaming exporter computes the same
thing tensor by tensor. Each pass it understands maps to a part of the plan, and the record says
which tool did each step. A pass it does not know is refused with the way out (``--exporter olive``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeqwen.compiler.export.genai import GenaiPlan
from edgeqwen.compiler.export.weights import FloatWeights, NBitsWeights
from edgeqwen.errors import ProfileError
from edgeqwen.targets import TargetProfile, rtn_roles

# Our graph passes after Olive, and what the streaming exporter does in their place.
GRAPH_PASSES_BUILT_IN = {
    "restore_io_names": "outputs are written under the names genai_config.json gives",
    "share_tied_embeddings": "a tied embedding reads the lm_head's table (stored once)",
    "rope_caches": "rotary tables are computed by transformers' own rope code",
}
_EXPORTER = "edgeqwen.compiler.export.genai (streaming, in place of Olive's ModelBuilder pass)"


def genai_plan(profile: TargetProfile) -> tuple[GenaiPlan, list[dict[str, Any]]]:
    """The plan for ``profile`` and one record per profile pass: what it asked and who did it."""
    where = f"profile {profile.source or profile.name}"
    passes = list(profile.olive_passes)
    if not passes or passes[0].type != "ModelBuilder":
        raise ProfileError(f"{where}: a genai profile starts with Olive's ModelBuilder pass")
    mb = passes[0].options
    extra = dict(mb.get("extra_options") or {})
    precision = str(mb.get("precision", "fp32"))
    ep = profile.execution_provider
    io = np.dtype(np.float16) if precision == "fp16" or (precision == "int4" and ep == "dml") else np.dtype(np.float32)
    if precision in ("fp32", "fp16"):
        weights = FloatWeights(io)
    elif precision == "int4":
        # the builder's own int4: symmetric blocks, fp16 scales on DirectML in a [N, K/block] table
        weights = NBitsWeights(4, int(extra.get("int4_block_size", 32)), True,
                               int(extra.get("int4_accuracy_level", 0)), io, scales_2d=True)
    else:
        raise ProfileError(f"{where}: ModelBuilder precision '{precision}' is not one the streaming exporter writes "
                           f"(fp32, fp16, int4); build with --exporter olive")
    records = [{"profile_pass": "ModelBuilder", "options": mb, "done_by": _EXPORTER}]
    roles: dict[str, NBitsWeights] = {}  # weights / lm_head / embedding -> the first RTN pass that took it
    for p in passes[1:]:
        if p.type != "OnnxBlockWiseRtnQuantization" or not isinstance(weights, FloatWeights) or io != np.float32:
            raise ProfileError(f"{where}: the streaming exporter cannot apply Olive pass {p.type} here; build with "
                               f"--exporter olive")
        o = p.options
        bits = int(o.get("bits", 4))
        fmt = NBitsWeights(bits, int(o.get("block_size", 128)), bool(o.get("is_symmetric", True)),
                           int(o.get("accuracy_level", 0)), io)
        for role in rtn_roles(o, where):
            roles.setdefault(role, fmt)  # a node an earlier pass quantised is MatMulNBits: later passes skip it
        records.append({"profile_pass": p.type, "options": o,
                        "done_by": f"onnxruntime quantize_matmul_{bits}bits, one block of rows at a time as the "
                                   f"weights stream (the kernel Olive's {p.type} runs over the whole graph in memory)"})
    plan = GenaiPlan(io_dtype=io, weights=roles.get("weights", weights), lm_head=roles.get("lm_head", weights),
                     quantized_embedding="embedding" in roles, layout="split" if ep == "dml" else "fused",
                     prune_lm_head=bool(extra.get("prune_lm_head", False)), execution_provider=ep,
                     embedding=roles.get("embedding"))
    unknown = [n for n in profile.graph_passes if n not in GRAPH_PASSES_BUILT_IN]
    if unknown:
        raise ProfileError(f"{where}: graph pass(es) {', '.join(unknown)} run on Olive's output; build with "
                           f"--exporter olive")
    return plan, records
