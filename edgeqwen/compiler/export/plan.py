"""A profile's Olive passes read as a streaming export plan.

The profile keeps naming Olive's passes (what to compute); the streaming exporter computes the same
thing tensor by tensor. Each pass it understands maps to a part of the plan, and the record says
which tool did each step. A pass it does not know is refused with the way out (``--exporter olive``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeqwen.compiler.export.genai import GenaiPlan
from edgeqwen.compiler.export.prequantized import OliveQuantConfig, PrequantizedWeights
from edgeqwen.compiler.export.weights import FloatWeights, NBitsWeights
from edgeqwen.compiler.torch_quant import TORCH_PASSES, TorchQuantStep, leading_torch_passes
from edgeqwen.errors import ProfileError
from edgeqwen.targets import TargetProfile, rtn_roles

# Our graph passes after Olive, and what the streaming exporter does in their place.
GRAPH_PASSES_BUILT_IN = {
    "restore_io_names": "outputs are written under the names genai_config.json gives",
    "share_tied_embeddings": "a tied embedding reads the lm_head's table (stored once)",
    "rope_caches": "rotary tables are computed by transformers' own rope code",
}
_EXPORTER = "edgeqwen.compiler.export.genai (streaming, in place of Olive's ModelBuilder pass)"


def genai_plan(profile: TargetProfile, prequantized: dict[str, Any] | None = None
               ) -> tuple[GenaiPlan, list[dict[str, Any]]]:
    """The plan for ``profile`` and one record per profile pass: what it asked and who did it.

    ``prequantized``: the quantisation_config of the checkpoint the profile's leading Olive PyTorch passes
    wrote (None: read from those passes' options, as Olive would write it)."""
    where = f"profile {profile.source or profile.name}"
    passes = list(profile.olive_passes)
    torch_steps = leading_torch_passes(passes)
    passes = passes[len(torch_steps):]
    if not passes or passes[0].type != "ModelBuilder":
        raise ProfileError(f"{where}: a genai profile starts with Olive's ModelBuilder pass (after any of "
                           f"Olive's PyTorch quantisation passes {', '.join(TORCH_PASSES)})")
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
    records = [_torch_record(t, where) for t in torch_steps]
    records.append({"profile_pass": "ModelBuilder", "options": mb, "done_by": _EXPORTER})
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
    body = roles.get("weights", weights)
    if torch_steps:
        cfg = OliveQuantConfig.of(prequantized or _olive_config(torch_steps))
        body = PrequantizedWeights(cfg, body, int(extra.get("int4_accuracy_level", 0)))
    plan = GenaiPlan(io_dtype=io, weights=body, lm_head=roles.get("lm_head", weights),
                     quantized_embedding="embedding" in roles, layout="split" if ep == "dml" else "fused",
                     prune_lm_head=bool(extra.get("prune_lm_head", False)), execution_provider=ep,
                     embedding=roles.get("embedding"))
    unknown = [n for n in profile.graph_passes if n not in GRAPH_PASSES_BUILT_IN]
    if unknown:
        raise ProfileError(f"{where}: graph pass(es) {', '.join(unknown)} run on Olive's output; build with "
                           f"--exporter olive")
    return plan, records


def _olive_config(steps: list[TorchQuantStep]) -> dict[str, Any]:
    """The quantisation_config Olive's pass writes, from its options (Olive's defaults: 4 bits, group 128,
    asymmetric); the last pass's defaults win, overrides accumulate (what Olive's prepare_model merges)."""
    cfg: dict[str, Any] = {"bits": 4, "group_size": 128, "symmetric": False, "overrides": {}}
    for t in steps:
        o = t.options
        cfg.update(bits=int(o.get("bits", cfg["bits"])), group_size=int(o.get("group_size", cfg["group_size"])),
                   symmetric=bool(o.get("sym", cfg["symmetric"])))
        cfg["overrides"].update(o.get("overrides") or {})
    return cfg


def _torch_record(t: TorchQuantStep, where: str) -> dict[str, Any]:
    if t.options.get("lm_head") or t.options.get("embeds"):
        # measured on the trained small Qwen3: a GPTQ'd 4-bit tied table costs 2-3x the KL of the layers
        raise ProfileError(f"{where}: the streaming exporter quantises the lm_head and embedding with an "
                           f"OnnxBlockWiseRtnQuantization pass after ModelBuilder (nodes_to_include); set "
                           f"lm_head/embeds false in the {t.type} pass")
    return {"profile_pass": t.type, "options": t.options,
            "done_by": f"Olive's {t.type} pass on the transformers model (in memory, edgeqwen.compiler.torch_quant); "
                       f"its packed weights are repacked into MatMulNBits, not quantised again"}
