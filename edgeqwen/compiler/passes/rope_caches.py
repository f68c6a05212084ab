"""Rotary tables computed by transformers itself, written over the builder's cos_cache / sin_cache.

The model builder re-implements every RoPE variant and gets YaRN wrong for Qwen configs (measured
on a tiny Qwen2.5 with factor-4 YaRN: cos tables off by up to 2.3, logits by 3.2). transformers'
own rotary module is the reference, so its inv_freq and attention scaling define the tables:
cos_cache[p, i] = cos(p * inv_freq[i]) * attention_scaling, shape [max_positions, head_dim / 2].
"""

from __future__ import annotations

import copy
import importlib
import sys
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeqwen.model.spec import ModelSpec

# rope types whose tables depend on the running sequence length cannot be precomputed
_DYNAMIC = {"dynamic", "longrope"}


def rotary_parameters(spec: ModelSpec, apart: bool = False) -> tuple[np.ndarray, float, str]:
    """(inv_freq [head_dim/2] float64, attention scaling, rope type) from transformers' own rotary module
    for the spec's architecture (YaRN's blended frequencies and scaling included). ``apart``: computed in a
    fresh process where this one has not imported torch yet, so that it never does for this: once imported,
    transformers and torch stay resident (~315 MB) for the rest of a build, on top of a large model's
    validation (its artifact side, the build's peak, needs neither; its references run apart)."""
    # a deep copy: transformers standardises the rope table in place, and the spec is read-only
    # the language model's config (Qwen3.5's text_config, whose rotary module reads it; else the top level)
    text = copy.deepcopy({k: v for k, v in spec.text_config.items() if k not in ("architectures",)})
    if apart and "torch" not in sys.modules:
        from edgeqwen.quality.fresh_process import run_fresh

        return run_fresh(_transformers_rotary, text, spec.rotary_module, log=lambda line: None)
    return _transformers_rotary(text, spec.rotary_module)


def _transformers_rotary(text: dict[str, Any], rotary_module: str, log=None) -> tuple[np.ndarray, float, str]:
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(**text)
    rope = getattr(cfg, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind in _DYNAMIC:
        raise RuntimeError(f"rope_type '{kind}' changes with sequence length; static rotary tables cannot express it")
    module, cls = rotary_module.split(":")
    rotary = getattr(importlib.import_module(module), cls)(cfg)
    return rotary.inv_freq.double().numpy(), float(rotary.attention_scaling), kind


def reference_tables(spec: ModelSpec, positions: int) -> tuple[np.ndarray, np.ndarray, str]:
    """cos/sin [positions, head_dim/2], computed in float64 and rounded once to fp32."""
    inv_freq, scale, kind = rotary_parameters(spec)
    freqs = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    return (np.cos(freqs) * scale).astype(np.float32), (np.sin(freqs) * scale).astype(np.float32), kind


def run(model: onnx.ModelProto, ctx) -> dict[str, Any]:
    inits = {t.name: t for t in model.graph.initializer}
    if "cos_cache" not in inits or "sin_cache" not in inits:
        raise RuntimeError("graph has no cos_cache/sin_cache initializers to replace")
    old_cos = numpy_helper.to_array(inits["cos_cache"])
    cos, sin, kind = reference_tables(ctx.spec, old_cos.shape[0])
    if cos.shape != old_cos.shape:
        raise RuntimeError(f"reference rotary table {cos.shape} does not match the graph's {old_cos.shape}")
    diff = float(np.abs(cos - old_cos).max())
    dtype = old_cos.dtype
    for name, table in (("cos_cache", cos), ("sin_cache", sin)):
        inits[name].CopyFrom(numpy_helper.from_array(table.astype(dtype), name))
    return {"rope_type": kind, "max_change": diff}
