"""The layer-wise GPTQ's peak memory, from the model's shape: one layer at a time, never the model.

Resident at the peak (fp32 throughout, bytes):
  base                   torch, transformers and Olive imported, the tokenizer loaded
  calibration states     samples x tokens x hidden x 4: every window's hidden states between layers
  one layer              its parameters x 4
  its Hessians           hidden^2 (q/k/v) + q_dim^2 (o) + hidden^2 (gate/up) + intermediate^2 (down), x 4
  the largest solve      GPTQ on the widest-input linear: the Cholesky factor and its inverse (2 K^2 x 4) and
                         Olive's W / Q / Losses copies (3 N K x 4); the accumulation's x x^T temporary (K^2 x 4)
                         is smaller and not at the same time
The terms are what the code holds (edgeqwen.compiler.gptq.run). Measured (/usr/bin/time -v, 32 x 512
windows): the Qwen2.5-0.5B shape (fp32) peaked at 1.28 GB, 0.76 GiB above the terms (0.43 GiB); BASE_BYTES
rounds that base up to 1 GiB as a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeqwen.model.spec import ModelSpec

FP32 = 4
BASE_BYTES = int(1.0 * 2**30)


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


def linear_shapes(spec: ModelSpec) -> list[tuple[int, int]]:
    """(N, K) of each decoder linear layer: q, k, v, o, gate, up, down."""
    h, q, kv, i = spec.hidden, spec.q_dim, spec.kv_dim, spec.intermediate
    return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]


def layer_parameters(spec: ModelSpec) -> int:
    """One decoder layer's parameter count (projections, biases, norms)."""
    n = sum(a * b for a, b in linear_shapes(spec)) + 2 * spec.hidden
    n += (spec.q_dim + 2 * spec.kv_dim) if spec.qkv_bias else 0
    return n + (2 * spec.head_dim if spec.qk_norm else 0)


def layerwise_peak(spec: ModelSpec, samples: int, tokens: int) -> LayerwisePeak:
    h, q, i = spec.hidden, spec.q_dim, spec.intermediate
    k_max = max(k for _, k in linear_shapes(spec))
    nk_max = max(n * k for n, k in linear_shapes(spec))
    return LayerwisePeak(base=BASE_BYTES, states=samples * tokens * h * FP32,
                         layer=layer_parameters(spec) * FP32, hessians=(2 * h * h + q * q + i * i) * FP32,
                         solve=(2 * k_max * k_max + 3 * nk_max) * FP32)
