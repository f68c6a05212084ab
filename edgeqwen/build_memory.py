"""The peak memory of `edgeqwen build` (without validation), from the model's shape and the profile's steps.

One model, two readers: the compiler refuses before it starts a build this machine cannot hold
(edgeqwen.compiler.torch_quant.check_memory), and `edgeqwen plan` shows the same figure beside the
artifact's own memory. Stdlib only (the planner runs without the compiler).

A build is a sequence of steps, each freeing what it held before the next starts; its peak is the largest:
  export       the streaming exporter: one block of rows at a time, whatever the size (measured 0.40-0.59 GB
               peak RSS from the 0.5B to the 8B shape, 585 / 576 / 582 MB for 4 / 8 / 16 layers)
  layer-wise   GPTQ one decoder layer at a time (edgeqwen.compiler.gptq), resident at its peak, fp32:
    GPTQ         base          torch, transformers and Olive imported, the tokenizer loaded
                 states        samples x tokens x hidden x 4: every window's hidden states between layers
                 layer         its parameters x 4
                 Hessians      one K^2 x 4 per input group: hidden^2 (q/k/v; Gated DeltaNet's in_proj) + q_dim^2
                               (o; value channels^2 for out_proj) + hidden^2 (gate/up) + intermediate^2 (down)
                 solve         GPTQ on the widest-input linear: its Hessian's Cholesky factor, made in place into
                               the inverse's upper factor (1 K^2 x 4; Olive's solver, arithmetic = "olive", holds
                               the factor and the inverse apart: 2 K^2, counted so both are covered), and the
                               weight's working copies (W^T, its codes, the result: 3 N K x 4); the
                               accumulation's x x^T temporary is smaller and not at the same time
               measured (/usr/bin/time -v, 32 x 512 windows, the fast arithmetic): the Qwen3-8B shape (bf16)
               peaked at 3.39 GiB on its first 2 layers (the terms: 4.41), the Qwen2.5-0.5B shape's first 2
               layers at 1.04 GB (the terms: 1.54); LAYERWISE_BASE rounds the libraries' 0.5-0.7 GB up to
               1 GiB as a margin. Resident memory does not grow from layer to layer: an earlier 5.93 GiB at
               8B was the first layer kept alive to the end by a traceback (edgeqwen.compiler.olive_import).
  whole model  an Olive PyTorch pass on the transformers model in memory (Rtn, KQuant; Gptq with
               implementation = "olive"): measured 4.87 GB on the 0.5B shape (fp32, 494M parameters) =
               1.5 GiB + 6.6 bytes per parameter; 8 leaves a margin for larger hidden sizes
Validation comes after and is not counted here: the artifact in the runtime (what running it needs), then
the fp32 reference one layer at a time (about 1 GB on the 7B shape).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from edgeqwen.model.spec import ModelSpec

FP32 = 4
EXPORT_BYTES = int(0.6 * 2**30)
LAYERWISE_BASE = int(1.0 * 2**30)
WHOLE_MODEL_BASE = int(1.5 * 2**30)  # torch, transformers, Olive and the tokenizer, loaded
WHOLE_MODEL_BYTES_PER_PARAMETER = 8.0


@dataclass(frozen=True)
class LayerDims:
    """What one kind of decoder layer's GPTQ holds depends on: its linear layers grouped by the input they
    read (one Hessian a group), and its other parameters (norms, biases, Gated DeltaNet's conv taps)."""

    hidden: int
    groups: tuple[tuple[int, tuple[int, ...]], ...]  # (K in, (N out of each linear reading that input))
    other: int

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(N, K) of each linear layer."""
        return [(n, k) for k, ns in self.groups for n in ns]

    def parameters(self) -> int:
        return sum(n * k for n, k in self.linear_shapes()) + self.other


def layer_dims(spec: ModelSpec) -> tuple[LayerDims, ...]:
    """Each distinct decoder layer of ``spec`` (one for Qwen2 / Qwen3; a Gated DeltaNet and a gated attention
    layer for Qwen3.5), from the tensor map's input groups and the checkpoint layout's shapes."""
    from edgeqwen.model.tensors import checkpoint_layout, tensor_map

    shapes = dict(checkpoint_layout(spec))
    out: dict[LayerDims, None] = {}
    for t in tensor_map(spec).layers:
        groups = tuple((shapes[g[0]][1], tuple(shapes[n][0] for n in g)) for g in t.input_groups())
        other = sum(math.prod(shapes[n]) for n in t.names() if n not in t.linears())
        out[LayerDims(spec.hidden, groups, other)] = None
    return tuple(out)


@dataclass(frozen=True)
class LayerwisePeak:
    base: int
    states: int
    layer: int
    hessians: int
    solve: int

    @property
    def total(self) -> int:
        return self.base + self.states + self.layer + self.hessians + self.solve


def layerwise_peak(kinds: Sequence[LayerDims], samples: int, tokens: int) -> LayerwisePeak:
    """The peak of GPTQ on the largest of the layer ``kinds`` (each held alone, one after another)."""
    def one(dims: LayerDims) -> LayerwisePeak:
        shapes = dims.linear_shapes()
        k_max = max(k for _, k in shapes)
        nk_max = max(n * k for n, k in shapes)
        return LayerwisePeak(base=LAYERWISE_BASE, states=samples * tokens * dims.hidden * FP32,
                             layer=dims.parameters() * FP32, hessians=sum(k * k for k, _ in dims.groups) * FP32,
                             solve=(2 * k_max * k_max + 3 * nk_max) * FP32)

    return max((one(d) for d in kinds), key=lambda p: p.total)


def whole_model_bytes(parameters: int) -> int:
    """Peak of an Olive pass holding the whole model."""
    return int(parameters * WHOLE_MODEL_BYTES_PER_PARAMETER + WHOLE_MODEL_BASE)


@dataclass(frozen=True)
class QuantiseStep:
    """One PyTorch quantisation step of a profile, as far as its memory goes."""

    type: str  # Olive's pass type: Gptq, Rtn, KQuant
    implementation: str  # "layerwise" (edgeqwen.compiler.gptq) or "olive" (the whole model in memory)
    samples: int  # calibration windows
    tokens: int  # tokens per window


def step_bytes(step: QuantiseStep, dims: Sequence[LayerDims] | None, parameters: int) -> int:
    """Peak of one step: the whole model's for Olive's passes, one layer's (the largest of ``dims``) for
    layer-wise GPTQ."""
    if step.implementation == "olive":
        return whole_model_bytes(parameters)
    if dims is None:
        raise ValueError("a layer-wise step's peak needs the layer's dimensions")
    return layerwise_peak(dims, step.samples, step.tokens).total


@dataclass(frozen=True)
class BuildPeak:
    """The build's peak (validation apart) and the step that sets it."""

    bytes: int
    step: str  # "export", or the quantisation step's type and implementation


def build_peak(dims: Sequence[LayerDims], parameters: int, steps: Sequence[QuantiseStep]) -> BuildPeak:
    """The largest of the steps' peaks: each frees what it held before the next one runs."""
    peak = BuildPeak(EXPORT_BYTES, "export")
    for s in steps:
        need = step_bytes(s, dims, parameters)
        if need > peak.bytes:
            peak = BuildPeak(need, f"{s.type} ({'layer by layer' if s.implementation == 'layerwise' else 'whole model'})")
    return peak


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (the kernel's estimate of what can be used without swapping)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
