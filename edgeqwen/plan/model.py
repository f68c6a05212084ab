"""The estimate `edgeqwen plan` makes: linear in a few physical features, its coefficients fitted from
measured builds and benches (``calibration.json``, refitted by ``benchmarks/plan_calibration.py``).

One function per quantity turns (shape, storage, tokens) into named features; the fit and the estimate
both go through them, so they cannot drift apart.

- size: exact weight bytes (storage.py) + the other files (tokenizer, graph; a measured constant).
- peak memory: a runtime base + weights x a per-kernel factor (onnxruntime prepacks some formats) + the
  KV buffer genai allocates for the whole capacity + prefill activations (MLP width and attention scores
  grow with the prompt: n x (intermediate + hidden), heads x n^2).
- decode: memory-bound, seconds per token = overhead + weight bytes read / bandwidth per kernel family +
  KV bytes read at the depth.
- prefill: compute-bound, seconds = n x (overhead + multiply-adds per token / throughput per kernel family)
  + attention's n^2 term.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from edgeqwen.plan.catalogue import Shape
from edgeqwen.plan.storage import Storage, decode_bytes, matmul_params, weight_bytes

QUANTITIES = ("size", "memory", "decode", "prefill")


def memory_features(shape: Shape, s: Storage, capacity: int, prompt: int) -> dict[str, float]:
    """Bytes: the peak RSS of a process that loaded the artifact and prefilled ``prompt`` tokens into a KV
    buffer of ``capacity`` positions."""
    return {"base": 1.0, f"weights_{s.kind}": float(weight_bytes(shape, s, 0)),
            # per-sequence state: the KV buffer for the whole capacity and the fixed states (Qwen3.5's Gated DeltaNet)
            "kv": float(capacity * shape.kv_bytes_per_token(s.float_bytes) + shape.fixed_state_bytes(s.float_bytes)),
            "activations": float(prompt * (shape.intermediate + shape.hidden) * s.float_bytes),
            "attention_scores": float(shape.heads * prompt * prompt * s.float_bytes)}


def decode_features(shape: Shape, s: Storage, depth: int) -> dict[str, float]:
    """Seconds per generated token with ``depth`` tokens in the KV cache."""
    return {"per_token": 1.0, f"bytes_{s.kind}": float(decode_bytes(shape, s, 0)),
            "kv_read": float(depth * shape.kv_bytes_per_token(s.float_bytes) + 2 * shape.fixed_state_bytes(s.float_bytes))}


def prefill_features(shape: Shape, s: Storage, n: int) -> dict[str, float]:
    """Seconds to prefill an ``n``-token prompt."""
    return {"per_token": float(n), f"macs_{s.kind}": float(n * matmul_params(shape, s)),
            "attention": float(shape.attention_layers * shape.heads * shape.head_size * n * n)}


FEATURES = {"memory": memory_features, "decode": decode_features, "prefill": prefill_features}
KIND_PREFIXES = ("weights_", "bytes_", "macs_")  # features named after a kernel family


def predict(coefficients: dict[str, float], features: dict[str, float]) -> float | None:
    """Sum of coefficient x feature; None when the kernel family has no coefficient (never measured). A term
    the fit dropped (its best value was negative, i.e. not seen in the data) counts as zero."""
    if any(k.startswith(KIND_PREFIXES) and k not in coefficients for k in features):
        return None
    return sum(coefficients.get(k, 0.0) * v for k, v in features.items())


@dataclass(frozen=True)
class Calibration:
    device: dict[str, Any]  # the machine the coefficients were measured on (bench's device facts)
    probe: dict[str, float]  # its bandwidth / GEMM probe figures (probe.py)
    files_bytes: int  # artifact bytes besides the initializers (tokenizer, graph, configs)
    coefficients: dict[str, dict[str, float]]  # quantity -> feature -> coefficient
    errors: dict[str, float]  # quantity -> largest |relative error| left out of the fit (leave one checkpoint out)
    points: list[dict[str, Any]] = field(default_factory=list)  # estimate vs measured, per artifact and context

    def kinds(self, quantity: str) -> set[str]:
        """Kernel families the quantity has a coefficient for (speed is unknown for the others)."""
        prefix = KIND_PREFIXES[("memory", "decode", "prefill").index(quantity)]
        return {k[len(prefix):] for k in self.coefficients[quantity] if k.startswith(prefix)}

    def predict(self, quantity: str, features: dict[str, float]) -> float | None:
        return predict(self.coefficients[quantity], features)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "edgeqwen.plan.calibration/1", "device": self.device, "probe": self.probe,
                "files_bytes": self.files_bytes, "coefficients": self.coefficients, "errors": self.errors,
                "points": self.points}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(d["device"], d["probe"], int(d["files_bytes"]), d["coefficients"], d["errors"], d.get("points", []))


UNITS = {"size": "GiB", "memory": "GiB", "decode": "tok/s", "prefill": "tok/s"}


def shown(quantity: str, value: float, features: dict[str, float] | None) -> float:
    """A row's value as people read it: GiB, or tokens/s for the time rows (decode: 1 / s per token;
    prefill: n / s)."""
    if quantity in ("size", "memory"):
        return value / 2**30
    return (1.0 if quantity == "decode" else (features or {}).get("per_token", 0.0)) / value


def readable(quantity: str, value: float, features: dict[str, float] | None) -> str:
    return f"{shown(quantity, value, features):.{2 if UNITS[quantity] == 'GiB' else 1}f} {UNITS[quantity]}"


def builtin_calibration() -> Calibration:
    text = resources.files("edgeqwen.plan").joinpath("calibration.json").read_text(encoding="utf-8")
    return Calibration.from_dict(json.loads(text))


@dataclass(frozen=True)
class Estimate:
    size_bytes: int
    memory_bytes: float
    decode_tokens_per_s: float | None
    prefill_tokens_per_s: float | None


def estimate(cal: Calibration, shape: Shape, s: Storage, positions: int, context: int, prompt: int = 512,
             speed_scale: tuple[float, float] = (1.0, 1.0)) -> Estimate:
    """Size, peak memory at ``context`` (the whole context prefilled at once: the worst case), decode speed
    halfway into the context and prefill speed for a ``prompt``-token prompt. ``speed_scale`` multiplies
    (decode, prefill) times: the device's probe against the calibration device's."""
    size = weight_bytes(shape, s, positions) + cal.files_bytes
    memory = cal.predict("memory", memory_features(shape, s, context, context))
    if memory is None:  # an uncalibrated kernel family: weights as stored, the other terms as fitted
        feats = memory_features(shape, s, context, context)
        memory = sum(cal.coefficients["memory"].get(k, 1.0) * v for k, v in feats.items())
    t_dec = cal.predict("decode", decode_features(shape, s, context // 2))
    t_pre = cal.predict("prefill", prefill_features(shape, s, prompt))
    return Estimate(size, memory, None if t_dec is None else 1.0 / (t_dec * speed_scale[0]),
                    None if t_pre is None else prompt / (t_pre * speed_scale[1]))
