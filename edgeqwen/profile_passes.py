"""A genai profile's Olive passes, read once: what each weight is stored as.

The streaming exporter (edgeqwen.compiler.export.plan turns this record into weight writers) and the
planner (edgeqwen.plan.storage counts its bytes) both read a profile through ``read_passes``, so the two
cannot disagree on a default. Stdlib only: `edgeqwen plan` runs without the compiler.

A genai profile is: Olive's PyTorch quantisation passes (GPTQ, RTN, k-quant; optional), then ModelBuilder
(precision and extra options), then weight passes on the builder's graph (optional: block-wise RTN, or
k-quant's searched scale and zero point), each taking the weights it names (the first pass to take a weight
keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgeqwen.build_memory import QuantiseStep
from edgeqwen.errors import ProfileError
from edgeqwen.targets import TORCH_PASSES, OlivePass, TargetProfile, rtn_roles

BUILDER_PRECISIONS = ("fp32", "fp16", "int4")  # the ModelBuilder precisions the streaming exporter writes
RTN_PASS = "OnnxBlockWiseRtnQuantization"
KQUANT_PASS = "OnnxKQuantQuantization"  # Olive's: every MatMul (not the Gather tables), always asymmetric
KQUANT_DEFAULT_BLOCK = 32  # Olive's default block_size for it
# Olive's defaults when a PyTorch pass leaves them out (olive.passes.pytorch: 4 bits, group 128, asymmetric)
TORCH_DEFAULTS = {"bits": 4, "group_size": 128, "sym": False}
# Our own options on the PyTorch passes (Olive's are passed through unchanged; these are popped before).
CALIBRATION_OPTIONS = {"calibration_samples": 32, "calibration_tokens": 512}
# Which code runs a step: "layerwise" (edgeqwen.compiler.gptq; Gptq only, its default) or "olive" (Olive's
# pass on the whole model in memory; the only one for Rtn and KQuant).
IMPLEMENTATION = "implementation"
IMPLEMENTATIONS = ("layerwise", "olive")
# The layer-wise Gptq's arithmetic: "fast" (bf16 matmuls in the calibration forwards where the CPU has them,
# symmetric Hessian products, one inverse-Hessian factor per input, the solve on the transposed weight:
# edgeqwen.compiler.gptq.own_solve), "fast-fp32" (the same in fp32 everywhere: no dependence on the CPU's
# bf16 support) or "olive" (Olive's own accumulation and solver, operation for operation: its packed weights).
ARITHMETIC = "arithmetic"
ARITHMETICS = ("fast", "fast-fp32", "olive")
DEFAULT_ARITHMETIC = ARITHMETICS[0]
# The layer-wise Gptq's group parameters: false (Olive's: each group's min/max range) or true (the range shrunk
# as far as it lowers the group's rounding error: edgeqwen.compiler.gptq.clip_search); not with "olive".
CLIP_SEARCH = "clip_search"
OWN_OPTIONS = (*CALIBRATION_OPTIONS, IMPLEMENTATION, ARITHMETIC, CLIP_SEARCH)  # popped before Olive reads them


@dataclass(frozen=True)
class Stored:
    """How one kind of weight is stored: float, or blocks of ``bits`` along K."""

    bits: int  # 32, 16 (float) or 8, 4 (blocks)
    block: int = 0  # 0: float
    symmetric: bool = True
    accuracy_level: int = 0  # MatMulNBits: 4 = int8 activations (the fast CPU kernel), 0 = the op's default
    scales_2d: bool = False  # ModelBuilder's own int4 keeps its scales as [N, K/block]
    # Olive's PyTorch passes: a layer whose K the group does not divide takes the largest power-of-two group
    # that does (edgeqwen.compiler.torch_quant.group_overrides); ONNX RTN pads K to whole blocks instead
    divides: bool = False
    algorithm: str = "rtn"  # blocks: "rtn" (round to nearest) or "kquant" (searched scale and zero point)

    @property
    def is_float(self) -> bool:
        return not self.block

    @property
    def kind(self) -> str:
        return f"int{self.bits}" if self.block else f"fp{self.bits}"


@dataclass(frozen=True)
class TorchQuant:
    """What Olive's PyTorch passes write into the checkpoint's quantisation_config: the last pass's format,
    every pass's per-module overrides (what Olive's prepare_model merges)."""

    bits: int
    group_size: int
    symmetric: bool
    overrides: dict[str, dict[str, Any]]
    steps: tuple[OlivePass, ...]

    def config(self) -> dict[str, Any]:
        """As Olive's quantisation_config names the fields."""
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "overrides": dict(self.overrides)}

    @property
    def stored(self) -> Stored:
        return Stored(self.bits, self.group_size, self.symmetric, divides=True)


@dataclass(frozen=True)
class PassPlan:
    """Everything a genai profile's passes decide about the weights, for ``where`` (the profile)."""

    where: str
    execution_provider: str
    io_bytes: int  # activations, KV cache, logits, norm weights and scales: 4 (fp32) or 2 (fp16)
    builder: Stored  # what ModelBuilder alone writes for every matrix
    layers: Stored  # decoder linear layers as the graph's passes store them (an RTN pass's format, or the builder's)
    lm_head: Stored
    embedding: Stored | None  # a quantised table (shared with a tied lm_head); None: a float table
    prune_lm_head: bool  # logits of the last position only
    int4_accuracy_level: int  # the builder's option: MatMulNBits' compute type for its int4 and the torch layers
    layout: str  # "fused" (q/k/v in one MatMul) | "split" (DirectML)
    torch: TorchQuant | None  # Olive's PyTorch passes before the builder
    builder_pass: OlivePass
    rtn_passes: tuple[OlivePass, ...]

    @property
    def weights(self) -> Stored:
        """The decoder linear layers: a PyTorch pass's format when one ran (it quantises them first), else
        ``layers``."""
        return replace(self.torch.stored, accuracy_level=self.int4_accuracy_level) if self.torch else self.layers


def read_passes(profile: TargetProfile) -> PassPlan:
    """The record of ``profile``'s passes; a pass or option the streaming exporter cannot apply is refused in
    one line naming the way out."""
    where = f"profile {profile.source or profile.name}"
    passes = list(profile.olive_passes)
    steps: list[OlivePass] = []
    while passes and passes[0].type in TORCH_PASSES:
        steps.append(passes.pop(0))
    if not passes or passes[0].type != "ModelBuilder":
        raise ProfileError(f"{where}: a genai profile starts with Olive's ModelBuilder pass (after any of "
                           f"Olive's PyTorch quantisation passes {', '.join(TORCH_PASSES)})")
    mb, rtn = passes[0], tuple(passes[1:])
    extra = dict(mb.options.get("extra_options") or {})
    precision = str(mb.options.get("precision", "fp32"))
    ep = profile.execution_provider
    if precision not in BUILDER_PRECISIONS:
        raise ProfileError(f"{where}: ModelBuilder precision '{precision}' is not one the streaming exporter writes "
                           f"({', '.join(BUILDER_PRECISIONS)}); build with --exporter olive")
    io = 2 if precision == "fp16" or (precision == "int4" and ep == "dml") else 4
    # the builder's own int4: symmetric blocks, scales in a [N, K/block] table
    level = int(extra.get("int4_accuracy_level", 0))
    builder = Stored(4, int(extra.get("int4_block_size", 32)), True, level, scales_2d=True) \
        if precision == "int4" else Stored(8 * io)
    roles: dict[str, Stored] = {}
    for p in rtn:
        if p.type not in (RTN_PASS, KQUANT_PASS) or not builder.is_float or io != 4:
            raise ProfileError(f"{where}: the streaming exporter cannot apply Olive pass {p.type} here; build with "
                               f"--exporter olive")
        taken = _kquant_roles(p.options, where) if p.type == KQUANT_PASS else _rtn_roles(p.options, where)
        for role, fmt in taken.items():
            roles.setdefault(role, fmt)  # a node an earlier pass quantised is MatMulNBits: later passes skip it
    torch = _torch_quant(steps, where) if steps else None
    return PassPlan(where=where, execution_provider=ep, io_bytes=io, builder=builder,
                    layers=roles.get("weights", builder),
                    lm_head=roles.get("lm_head", builder), embedding=roles.get("embedding"),
                    prune_lm_head=bool(extra.get("prune_lm_head", False)), int4_accuracy_level=level,
                    layout="split" if ep == "dml" else "fused", torch=torch, builder_pass=mb, rtn_passes=rtn)


def _rtn_roles(o: dict[str, Any], where: str) -> dict[str, Stored]:
    fmt = Stored(int(o.get("bits", 4)), int(o.get("block_size", 128)), bool(o.get("is_symmetric", True)),
                 int(o.get("accuracy_level", 0)))
    return {role: fmt for role in rtn_roles(o, where)}


def _kquant_roles(o: dict[str, Any], where: str) -> dict[str, Stored]:
    """What an OnnxKQuantQuantization pass takes: every MatMul, so the decoder layers and the lm_head (a node
    it excludes or overrides by name: the lm_head only); never the embedding Gather."""
    def fmt(bits: int, block: int) -> Stored:
        if bits not in (4, 8):
            raise ProfileError(f"{where}: {KQUANT_PASS} bits {bits}: MatMulNBits takes 4 or 8")
        return Stored(bits, block, False, int(o.get("accuracy_level", 0)), algorithm="kquant")

    base = fmt(int(o.get("bits", 4)), int(o.get("block_size", KQUANT_DEFAULT_BLOCK)))
    head = "/lm_head/MatMul"
    custom = dict(o.get("customized_weight_config") or {})
    excluded = list(o.get("nodes_to_exclude") or [])
    unknown = [n for n in [*custom, *excluded] if n != head]
    if unknown:
        raise ProfileError(f"{where}: {KQUANT_PASS} names nodes {unknown}; the streaming exporter applies per-node "
                           f"settings to {head} only; build with --exporter olive")
    roles = {"weights": base}
    if head not in excluded:
        c = custom.get(head, {})
        roles["lm_head"] = fmt(int(c.get("bits", base.bits)), int(c.get("group_size", base.block)))
    return roles


def _torch_quant(steps: list[OlivePass], where: str) -> TorchQuant:
    cfg = dict(TORCH_DEFAULTS)
    overrides: dict[str, dict[str, Any]] = {}
    for s in steps:
        if s.options.get("lm_head") or s.options.get("embeds"):
            # measured on the trained small Qwen3: a GPTQ'd 4-bit tied table costs 2-3x the KL of the layers
            raise ProfileError(f"{where}: the streaming exporter quantises the lm_head and embedding with an "
                               f"{RTN_PASS} pass after ModelBuilder (nodes_to_include); set lm_head/embeds false "
                               f"in the {s.type} pass")
        cfg.update({k: s.options.get(k, cfg[k]) for k in TORCH_DEFAULTS})
        overrides.update(s.options.get("overrides") or {})
    return TorchQuant(int(cfg["bits"]), int(cfg["group_size"]), bool(cfg["sym"]), overrides, tuple(steps))


def step_implementation(type_: str, options: dict[str, Any]) -> str:
    """Who runs a PyTorch pass: "layerwise" (Gptq's default) or "olive"; another value is refused."""
    default = "layerwise" if type_ == "Gptq" else "olive"
    impl = str(options.get(IMPLEMENTATION, default))
    if impl not in IMPLEMENTATIONS or (impl == "layerwise" and type_ != "Gptq"):
        allowed = IMPLEMENTATIONS if type_ == "Gptq" else ("olive",)
        raise ProfileError(f"{type_}: implementation '{impl}' is not one of {', '.join(allowed)}")
    return impl


def step_arithmetic(type_: str, options: dict[str, Any]) -> str:
    """The layer-wise Gptq's arithmetic ("fast" unless the step says "olive"); refused on a step that is not
    the layer-wise Gptq (Olive's own passes have only Olive's)."""
    if ARITHMETIC not in options:
        return DEFAULT_ARITHMETIC
    value = str(options[ARITHMETIC])
    if step_implementation(type_, options) != "layerwise":
        raise ProfileError(f"{type_}: arithmetic applies to the layer-wise Gptq only; drop it or drop "
                           f"implementation = \"olive\"")
    if value not in ARITHMETICS:
        raise ProfileError(f"{type_}: arithmetic '{value}' is not one of {', '.join(ARITHMETICS)}")
    return value


def step_clip_search(type_: str, options: dict[str, Any]) -> bool:
    """Whether the layer-wise Gptq searches its groups' scales (false unless the step says true); refused where
    Olive's own arithmetic or pass runs (they have Olive's quantiser only) and on a value that is not a bool."""
    value = options.get(CLIP_SEARCH, False)
    if not isinstance(value, bool):
        raise ProfileError(f"{type_}: clip_search must be true or false, not {value!r}")
    if value and (step_implementation(type_, options) != "layerwise" or step_arithmetic(type_, options) == "olive"):
        raise ProfileError(f"{type_}: clip_search needs the layer-wise Gptq's own arithmetic; drop it, or drop "
                           f"implementation = \"olive\" / arithmetic = \"olive\"")
    return value


def step_calibration(options: dict[str, Any]) -> tuple[int, int]:
    """(samples, tokens) of a PyTorch pass's calibration windows."""
    samples, tokens = (int(options.get(k, v)) for k, v in CALIBRATION_OPTIONS.items())
    return samples, tokens


def quantise_steps(profile: TargetProfile) -> tuple[QuantiseStep, ...]:
    """The PyTorch quantisation passes a profile runs before ModelBuilder, as their memory needs them."""
    out = []
    for p in profile.olive_passes:
        if p.type not in TORCH_PASSES:
            break
        step_arithmetic(p.type, p.options)  # a bad value is refused with the profile, not mid-build
        step_clip_search(p.type, p.options)
        out.append(QuantiseStep(p.type, step_implementation(p.type, p.options), *step_calibration(p.options)))
    return tuple(out)


# Profiles a model with Gated DeltaNet layers (Qwen3.5) builds to: its graph needs onnxruntime's
# CausalConvWithState and LinearAttention contrib ops (CPU kernels only; NNAPI takes no contrib ops, DirectML
# has no kernels for them); Olive's own PyTorch passes (the whole model in memory) do not know its layers,
# the layer-wise GPTQ calibrates them through transformers' own Gated DeltaNet.
LINEAR_ATTENTION_PROFILES = "cpu-fp32, cpu-int8, cpu-int4, cpu-int4-fast, android-cpu-int4 or android-cpu-int4-fast"


def linear_attention_refusal(profile: TargetProfile) -> str:
    """Why ``profile`` cannot build a model with Gated DeltaNet layers, in a few words ("" where it can)."""
    if profile.backend != "genai" or profile.execution_provider != "cpu" or read_passes(profile).layout != "fused":
        return (f"its CausalConvWithState and LinearAttention contrib ops have CPU kernels only (none for "
                f"{profile.execution_provider})")
    whole = [s.type for s in quantise_steps(profile) if s.implementation == "olive"]
    if whole:
        return (f"Olive's own {'/'.join(whole)} pass does not know its Gated DeltaNet layers (use Gptq with "
                f"implementation = \"layerwise\", the default)")
    return ""
