"""A profile's Olive passes read as a streaming export plan.

The profile keeps naming Olive's passes (what to compute); the streaming exporter computes the same
thing tensor by tensor. The passes are read once, by edgeqwen.profile_passes (the planner reads the same
record); here each stored format becomes its weight writer, and the record says which tool did each
step. A pass it does not know is refused with the way out (``--exporter olive``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeqwen.compiler.export.genai import GenaiPlan
from edgeqwen.compiler.export.prequantized import OliveQuantConfig, PrequantizedWeights
from edgeqwen.compiler.export.weights import FloatWeights, NBitsWeights, WeightFormat
from edgeqwen.compiler.torch_quant import TorchQuantStep, describe
from edgeqwen.errors import ProfileError
from edgeqwen.model.tensors import TensorMap
from edgeqwen.profile_passes import KQUANT_PASS, PassPlan, Stored, read_passes
from edgeqwen.targets import OlivePass, TargetProfile

# Our graph passes after Olive, and what the streaming exporter does in their place.
GRAPH_PASSES_BUILT_IN = {
    "restore_io_names": "outputs are written under the names genai_config.json gives",
    "share_tied_embeddings": "a tied embedding reads the lm_head's table (stored once)",
    "rope_caches": "rotary tables are computed by transformers' own rope code",
}
_EXPORTER = "edgeqwen.compiler.export.genai (streaming, in place of Olive's ModelBuilder pass)"


def genai_plan(profile: TargetProfile, prequantized: dict[str, Any] | None = None, names: TensorMap | None = None
               ) -> tuple[GenaiPlan, list[dict[str, Any]]]:
    """The plan for ``profile`` and one record per profile pass: what it asked and who did it.

    ``prequantized``: the quantisation_config of the checkpoint the profile's leading Olive PyTorch passes
    wrote (None: as read from those passes' options, what Olive would write); ``names``: the checkpoint's
    tensor map, which translates that config's module paths (Olive's) into the checkpoint's."""
    passes = read_passes(profile)
    io = np.dtype(np.float32 if passes.io_bytes == 4 else np.float16)
    unknown = [n for n in profile.graph_passes if n not in GRAPH_PASSES_BUILT_IN]
    if unknown:
        raise ProfileError(f"{passes.where}: graph pass(es) {', '.join(unknown)} run on Olive's output; build with "
                           f"--exporter olive")
    body = writer(passes.layers, io)
    if passes.torch:
        cfg = OliveQuantConfig.of(prequantized or passes.torch.config(), names)
        body = PrequantizedWeights(cfg, body, passes.int4_accuracy_level)
    plan = GenaiPlan(io_dtype=io, weights=body, lm_head=writer(passes.lm_head, io),
                     quantized_embedding=passes.embedding is not None, layout=passes.layout,
                     prune_lm_head=passes.prune_lm_head, execution_provider=passes.execution_provider,
                     embedding=writer(passes.embedding, io) if passes.embedding else None)
    return plan, records(passes)


def writer(fmt: Stored, io: np.dtype) -> WeightFormat:
    """The weight writer that stores ``fmt`` (activations and scales in ``io``)."""
    if fmt.is_float:
        return FloatWeights(io)
    return NBitsWeights(fmt.bits, fmt.block, fmt.symmetric, fmt.accuracy_level, io, scales_2d=fmt.scales_2d,
                        algorithm=fmt.algorithm)


def records(passes: PassPlan) -> list[dict[str, Any]]:
    """One record per profile pass: what it asked and which tool did it."""
    out = [_torch_record(t) for t in (passes.torch.steps if passes.torch else ())]
    out.append({"profile_pass": "ModelBuilder", "options": passes.builder_pass.options, "done_by": _EXPORTER})
    for p in passes.rtn_passes:
        bits = int(p.options.get("bits", 4))
        if p.type == KQUANT_PASS:
            done_by = ("edgeqwen.compiler.export.kquant, one block of rows at a time as the weights stream (the "
                       f"bytes Olive's {p.type} computes over the whole graph in memory)")
        else:
            done_by = (f"onnxruntime quantize_matmul_{bits}bits, one block of rows at a time as the weights stream "
                       f"(the kernel Olive's {p.type} runs over the whole graph in memory)")
        out.append({"profile_pass": p.type, "options": p.options, "done_by": done_by})
    return out


def _torch_record(t: OlivePass) -> dict[str, Any]:
    return {"profile_pass": t.type, "options": t.options, "done_by": describe(TorchQuantStep(t.type, dict(t.options)))}
