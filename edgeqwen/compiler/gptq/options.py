"""The Gptq step's options as Olive's pass reads them, and the quantisation_config Olive saves from them.

Olive 0.13's Gptq options (olive.passes.pytorch.gptq, quant_utils.get_quantizer_config): bits, group_size,
sym, lm_head, overrides, damp_percent, desc_act, data_config. The layer-wise implementation takes the same
names with the same defaults and validation, so a profile means the same thing under either; it does not
quantise the lm_head (no profile asks for it) and calibrates on edgeqwen's local text only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeqwen.errors import ProfileError
from edgeqwen.profile_passes import DEFAULT_ARITHMETIC

# Olive's defaults (get_quantizer_config and Gptq._default_config)
DEFAULTS: dict[str, Any] = {"bits": 4, "group_size": 128, "sym": False, "lm_head": False, "overrides": None,
                            "damp_percent": 0.01, "desc_act": None}
OVERRIDE_KEYS = ("bits", "symmetric", "group_size")


@dataclass(frozen=True)
class ModuleFormat:
    """How one linear layer is quantised (Olive's get_qlinear_init_args)."""

    bits: int
    symmetric: bool
    group_size: int  # > 0 groupwise along K; -1 one group per row

    def qargs(self) -> dict[str, Any]:
        """WeightQuantizer / QuantLinear keyword arguments."""
        return {"bits": self.bits, "symmetric": self.symmetric, "group_size": self.group_size}

    def rank(self) -> tuple[int, int, int]:
        """Olive's quant_utils._quant_config_rank: more bits, then smaller positive group, then per-row."""
        g = (2, -self.group_size) if self.group_size > 0 else (1, 0) if self.group_size == -1 else (0, 0)
        return self.bits, *g


@dataclass(frozen=True)
class GptqOptions:
    bits: int = 4
    group_size: int = 128
    sym: bool = False
    damp_percent: float = 0.01
    desc_act: bool | None = None  # None: act order exactly when group_size is -1 (Gptq.process_module)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # module path -> OVERRIDE_KEYS
    arithmetic: str = DEFAULT_ARITHMETIC  # ours, not Olive's: one of profile_passes.ARITHMETICS
    clip_search: bool = False  # ours, not Olive's: each group's scale chosen by its rounding error (clip_search)

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> GptqOptions:
        """The step's options (our calibration options already removed); refused as Olive's validation would."""
        unknown = sorted(set(options) - set(DEFAULTS) - {"data_config"})
        if unknown:
            raise ProfileError(f"Gptq (layer-wise) has no option {', '.join(unknown)}; it takes "
                               f"{', '.join(sorted(DEFAULTS))}")
        if options.get("data_config") is not None:
            raise ProfileError("Gptq (layer-wise) calibrates on edgeqwen's local text (calibration_samples, "
                               "calibration_tokens); drop data_config or set implementation = \"olive\"")
        if options.get("lm_head"):
            raise ProfileError("Gptq (layer-wise) quantises the decoder layers only; lm_head = true needs "
                               "implementation = \"olive\" (the whole model in memory)")
        o = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
        out = cls(int(o["bits"]), int(o["group_size"]), bool(o["sym"]), float(o["damp_percent"]),
                  None if o["desc_act"] is None else bool(o["desc_act"]), dict(o["overrides"] or {}))
        out.validate()
        return out

    def validate(self) -> None:
        """Gptq.validate_config and QuantModule's own checks, as one-line profile errors."""
        if self.bits not in (2, 4, 8):
            raise ProfileError(f"Gptq bits must be 2, 4 or 8, not {self.bits}")
        if self.group_size <= 0 and self.group_size != -1:
            raise ProfileError(f"Gptq group_size must be -1 or greater than 0, not {self.group_size}")
        if self.desc_act is True and self.group_size != -1:
            raise ProfileError("Gptq desc_act = true needs group_size = -1")
        for name, o in self.overrides.items():
            bad = sorted(set(o) - set(OVERRIDE_KEYS))
            if bad:
                raise ProfileError(f"Gptq override for {name} has unknown keys {bad}; it takes {OVERRIDE_KEYS}")

    def default(self) -> ModuleFormat:
        return ModuleFormat(self.bits, self.sym, self.group_size)

    def module(self, name: str) -> ModuleFormat:
        """The format of module ``name`` before q/k/v are made to agree (OliveHfQuantizationConfig)."""
        o = {k: v for k, v in self.overrides.get(name, {}).items() if v is not None}
        return ModuleFormat(int(o.get("bits", self.bits)), bool(o.get("symmetric", self.sym)),
                            int(o.get("group_size", self.group_size)))


def module_formats(options: GptqOptions, groups: list[tuple[str, ...]]) -> dict[str, ModuleFormat]:
    """Every quantised module's format. ``groups``: the modules of each decoder layer, q/k/v first as one
    tuple: Olive's normalize_qkv_quant_config gives q, k and v one format (the most precise of theirs)
    so that the exporter can fuse them into one MatMulNBits."""
    out: dict[str, ModuleFormat] = {}
    for group in groups:
        formats = {name: options.module(name) for name in group}
        shared = max(formats.values(), key=ModuleFormat.rank) if len(set(formats.values())) > 1 else None
        out.update({name: shared or f for name, f in formats.items()})
    return out


def quantization_config(options: GptqOptions, formats: Mapping[str, ModuleFormat]) -> dict[str, Any]:
    """config.json's quantization_config as Olive's finalize writes it (OliveHfQuantizationConfig.to_dict):
    overrides only where a module differs from the defaults, and only for quantised modules."""
    from olive.common.quant.hf_utils import OliveHfQuantizationConfig

    default = options.default()
    overrides = {name: {k: v for k, v in f.qargs().items() if v != default.qargs()[k]}
                 for name, f in formats.items() if f != default}
    cfg = OliveHfQuantizationConfig(bits=options.bits, symmetric=options.sym, group_size=options.group_size,
                                    lm_head=False, embeds=False, overrides=overrides)
    return cfg.to_dict()
