"""What a validation found, as typed records; ``to_dict`` gives the manifest's ``validation`` section.

The manifest form (JSON: key names and order) is what `edgeqwen inspect`, the reports and older
artifacts read, so it is written exactly as before these records existed; the records are what code
reads in between (no keys added and popped on the way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeqwen.targets import QualityBounds, ValidationBounds

Metrics = dict[str, Any]  # edgeqwen.quality.metrics.summarize: tokens, perplexities, KL mean/p90/p99/max, top-1


@dataclass(frozen=True)
class LogitComparison:
    """The artifact's logits against the reference's over one text, teacher-forced."""

    positions: int
    max_abs_logit_diff: float
    kl_mean: float
    kl_p90: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    kl: np.ndarray = field(repr=False)  # [positions] per-position KL
    nll_ref: np.ndarray = field(repr=False)  # [positions with a target]
    nll_test: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class PromptResult:
    """One built-in prompt: its logit comparison and the greedy continuation's agreement."""

    prompt: str
    logits: LogitComparison
    greedy_match: int
    greedy_tokens: int
    tokenizer_match: bool

    def to_dict(self) -> dict[str, Any]:
        c = self.logits
        return {"positions": c.positions, "max_abs_logit_diff": c.max_abs_logit_diff, "kl_mean": c.kl_mean,
                "kl_p90": c.kl_p90, "kl_p99": c.kl_p99, "kl_max": c.kl_max, "top1_agreement": c.top1_agreement,
                "greedy_match": self.greedy_match, "greedy_tokens": self.greedy_tokens,
                "tokenizer_match": self.tokenizer_match, "prompt": self.prompt}


@dataclass(frozen=True)
class GateSummary:
    """Every prompt together: what the profile's bounds are checked against."""

    positions: int
    max_abs_logit_diff: float
    kl_mean: float
    kl_p90: float
    kl_p99: float
    perplexity: float
    reference_perplexity: float
    kl_max: float
    top1_agreement: float
    greedy_match_min: int
    tokenizer_match: bool


@dataclass(frozen=True)
class Gate:
    """The artifact against its reference on the built-in prompts (``compare``)."""

    failures: list[str]
    bounds: ValidationBounds
    summary: GateSummary
    prompts: list[PromptResult]
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class OffTensor:
    tensor: str
    error_steps: float


@dataclass(frozen=True)
class TensorError:
    tensor: str
    relative_error: float


@dataclass(frozen=True)
class WeightCheck:
    """Every quantised weight of the artifact against the checkpoint, in quantisation steps."""

    tensors: int
    max_error_steps: float
    prequantized: int
    unchecked: list[str]  # an Olive pass's weights with no quantised checkpoint to compare them with
    prequantized_max_steps: float
    not_quantisations: list[OffTensor]
    worst_tensors: list[TensorError]

    @property
    def failures(self) -> list[str]:
        if not self.not_quantisations:
            return []
        return ["weights not a quantisation of the checkpoint: " + ", ".join(
            f"{t.tensor} ({t.error_steps:.3g} steps off)" for t in self.not_quantisations[:3])]


@dataclass(frozen=True)
class QuantizationLoss:
    """What quantisation cost against the fp32 checkpoint on the built-in loss text."""

    summary: Metrics
    texts: list[Metrics]
    bounds: QualityBounds
    failures: list[str]
    warn: bool  # above the profile's warn_kl_mean

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "texts": self.texts,
                "bounds": {k: v for k, v in asdict(self.bounds).items() if v is not None},
                "failures": self.failures, "warn": self.warn}


@dataclass(frozen=True)
class LossSkipped:
    reason: str
    failures: tuple[str, ...] = ()
    warn: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": True, "failures": [], "reason": self.reason}


@dataclass(frozen=True)
class Int8Effect:
    """What int8 activations in MatMulNBits change: the artifact against its fp32-compute twin."""

    kl_mean: float
    kl_p99: float
    top1_agreement: float


@dataclass(frozen=True)
class Validation:
    """The whole verdict: the gate, the weight check and the quantisation loss (when the artifact has
    quantised weights), and where it ran."""

    gate: Gate
    reference: str
    execution_provider: str
    seconds: float
    weights: WeightCheck | None = None
    quantization_loss: QuantizationLoss | LossSkipped | None = None
    int8_activations: Int8Effect | None = None

    @property
    def failures(self) -> list[str]:
        return [*self.gate.failures, *(self.weights.failures if self.weights else []),
                *(self.quantization_loss.failures if self.quantization_loss else [])]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        g = self.gate
        out: dict[str, Any] = {"passed": self.passed, "failures": self.failures, "bounds": asdict(g.bounds),
                               "summary": asdict(g.summary), "prompts": [p.to_dict() for p in g.prompts],
                               "seconds": self.seconds, "reference": self.reference}
        if self.weights is not None:
            out["weights"] = asdict(self.weights)
        if self.quantization_loss is not None:
            out["quantization_loss"] = self.quantization_loss.to_dict()
        if self.int8_activations is not None:
            out["int8_activations"] = asdict(self.int8_activations)
        out["execution_provider"] = self.execution_provider
        return out
