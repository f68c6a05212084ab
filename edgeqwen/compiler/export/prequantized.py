"""Weights an Olive PyTorch pass (GPTQ, RTN, k-quant) already quantised: repacked, not quantised again.

Olive's format per linear layer ``X`` (olive.common.quant.nn.QuantModule):
  X.qweight [n, K*bits/8] uint8, values unsigned, low bits first along K
  X.scales  [n, K/group] in the model's float type
  X.qzeros  [n, K/group*bits/8] uint8, same packing (absent when symmetric: zero point 2^(bits-1))
MatMulNBits wants B [N, K/block, block*bits/8] (the same bytes, a reshape), scales [N * K/block] and zero
points [N * K/block*bits/8] (the same packing): q, k and v stack along N exactly as their rows do. The
values the graph computes with are therefore the ones Olive's pass chose, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeqwen.compiler.export.weights import NBitsWeights, Sink, WeightFormat
from edgeqwen.errors import CheckpointError
from edgeqwen.model.tensors import TensorMap

ROWS_PER_COPY = 8192


@dataclass(frozen=True)
class OliveQuantConfig:
    """The quantisation_config Olive saves: defaults and per-module overrides."""

    bits: int
    group_size: int
    symmetric: bool
    overrides: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, cfg: dict[str, Any], names: TensorMap | None = None) -> OliveQuantConfig:
        """``cfg`` with its overrides keyed by checkpoint module paths: Olive keys them by the transformers
        model's (``names`` translates where the two differ: Qwen3.5's model.language_model.)."""
        overrides = dict(cfg.get("overrides") or {})
        if names is not None:
            overrides = {_checkpoint_module(names, k): v for k, v in overrides.items()}
        return cls(int(cfg["bits"]), int(cfg["group_size"]), bool(cfg["symmetric"]), overrides)

    def module(self, name: str) -> tuple[int, int, bool]:
        """(bits, group size, symmetric) of checkpoint module ``name`` (e.g. model.layers.0.mlp.up_proj)."""
        o = self.overrides.get(name, {})
        return int(o.get("bits", self.bits)), int(o.get("group_size", self.group_size)), \
            bool(o.get("symmetric", self.symmetric))


def _checkpoint_module(names: TensorMap, module: str) -> str:
    try:
        return names.checkpoint_name(module + ".weight").removesuffix(".weight")
    except KeyError:  # not a weight of this model (an override Olive would not apply either)
        return module


def quantised(sink: Sink, weight_name: str) -> bool:
    return weight_name.removesuffix(".weight") + ".qweight" in sink.src


@dataclass(frozen=True)
class PrequantizedWeights:
    """MatMulNBits from Olive-quantised tensors; a linear layer the pass left float goes to ``fallback``."""

    config: OliveQuantConfig
    fallback: WeightFormat
    accuracy_level: int = 0

    def _format(self, names: tuple[str, ...]) -> tuple[int, int, bool]:
        kinds = {self.config.module(n.removesuffix(".weight")) for n in names}
        if len(kinds) != 1:  # q, k, v fused into one MatMulNBits need one format
            raise CheckpointError(f"{', '.join(names)} were quantised with different settings {sorted(kinds)}; "
                                  f"give them one bits/group_size/symmetric in the profile's quantisation pass")
        return kinds.pop()

    def write(self, sink: Sink, base: str, names: tuple[str, ...]) -> tuple[list[str], int, int]:
        done = [quantised(sink, n) for n in names]
        if not any(done):
            return self.fallback.write(sink, base, names)
        if not all(done):
            raise CheckpointError(f"{', '.join(names)}: some are quantised in the checkpoint and some not")
        bits, group, sym = self._format(names)
        prefixes = [n.removesuffix(".weight") for n in names]
        kb = sink.src.shape(prefixes[0] + ".scales")[1]
        k = sink.src.shape(prefixes[0] + ".qweight")[1] * 8 // bits
        if group == -1:  # one group per row: one MatMulNBits block, a power of two, padding past K ignored
            group = max(16, 1 << (k - 1).bit_length())
        blob, zp_cols = group * bits // 8, math.ceil(kb * bits / 8)
        n_total = sum(sink.src.shape(p + ".qweight")[0] for p in prefixes)
        b_t, b = sink.data.reserve(f"{base}_Q{bits}", np.uint8, (n_total, kb, blob))
        s_t, s = sink.data.reserve(f"{base}_scales", np.dtype(np.float32), (n_total * kb,))
        z_t, z = (None, None) if sym else sink.data.reserve(f"{base}_zero_point", np.uint8, (n_total * zp_cols,))
        at = 0
        for p in prefixes:
            rows = sink.src.shape(p + ".qweight")[0]
            for r in range(0, rows, ROWS_PER_COPY):
                stop = min(rows, r + ROWS_PER_COPY)
                q = sink.src.rows(p + ".qweight", r, stop, raw=True)  # [n, K*bits/8]
                if q.shape[1] != kb * blob:  # a per-row group: pad the row to the block
                    q = np.pad(q, ((0, 0), (0, kb * blob - q.shape[1])))
                b.write((at + r) * kb * blob, np.ascontiguousarray(q))
                s.write((at + r) * kb * 4, np.ascontiguousarray(sink.src.rows(p + ".scales", r, stop)))
                if z is not None:
                    z.write((at + r) * zp_cols, np.ascontiguousarray(sink.src.rows(p + ".qzeros", r, stop, raw=True)))
            at += rows
            sink.consumed.update(f"{p}.{t}" for t in ("qweight", "scales", "qzeros") if f"{p}.{t}" in sink.src)
        sink.inits.extend(t for t in (b_t, s_t, z_t) if t is not None)
        sink.stacked[b_t.name] = [[n, sink.src.shape(p + ".qweight")[0]] for n, p in zip(names, prefixes)]
        sink.prequantized[b_t.name] = (bits, group)
        return [t.name for t in (b_t, s_t, z_t) if t is not None], n_total, k

    def node(self, sink: Sink, x: str, out: str, prefix: str, inputs: list[str], n: int, k: int) -> None:
        fmt = sink.prequantized.get(inputs[0])
        if fmt is None:  # the fallback wrote this one
            return self.fallback.node(sink, x, out, prefix, inputs, n, k)
        bits, group = fmt  # the node's attributes; zero points (or their absence) are inputs
        NBitsWeights(bits, group, True, self.accuracy_level).node(sink, x, out, prefix, inputs, n, k)
