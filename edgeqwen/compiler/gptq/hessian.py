"""GPTQ's Hessians: one per distinct input of a decoder layer's linear layers.

q, k and v read the same normed hidden states, gate and up the same ones (a Gated DeltaNet layer's four
input projections too): Olive keeps one Hessian per module (seven a layer), here those sharing an input
share one (four a layer: a smaller peak, less work), the same values since they are the same arithmetic on
the same tensors. The groups come from the tensor map (edgeqwen.model.tensors ``input_groups``), as module
paths inside the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Linear layers by input, as module paths inside a decoder layer, e.g. (q, k, v), (o,), (gate, up), (down,).
Groups = tuple[tuple[str, ...], ...]


@dataclass
class Hessian:
    """2/N sum of x x^T over the N calibration windows seen, x [K, T] one window's input: [K, K] fp32."""

    h: torch.Tensor
    n: int = 0

    def add(self, x: torch.Tensor) -> None:
        """One batch ``x`` [B, T, K]: Olive's Gptq.accumulate_hessian operation for operation (the running
        mean rescaled before each batch), so the sums round exactly as Olive's do."""
        batch = x.shape[0]
        x = x.reshape(-1, self.h.shape[0]).t()  # [K, B*T]
        self.h *= self.n / (self.n + batch)
        self.n += batch
        x = math.sqrt(2 / self.n) * x.float()
        self.h += x.matmul(x.t())


@dataclass
class SymmetricHessian:
    """The same 2/N sum of x x^T, for the fast arithmetic: the windows' rows gathered ``BATCH_ROWS`` at a time
    and only the blocks on and above the diagonal multiplied (x^T x is symmetric: 56-62 % of the products
    for K of 4,096-12,288), mirrored once at the end. In fp32 equal to Hessian's up to the order of the
    sums; in bf16 (the fast arithmetic on a CPU with bf16 dot products, 2.7x the fp32 product's speed) within
    0.2 % of it, which moves GPTQ's own objective by 0.1 % or less (Qwen3-8B shape, layer 0, 32 x 512 tokens:
    tr((W - Q) H (W - Q)^T) under the fp32 H, q/k/v 0.99999 / 1.00091 / 1.00070)."""

    k: int
    dtype: torch.dtype = torch.float32  # the block products' inputs (bf16: rounded, each product widened)
    n: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)  # pending inputs, each [T, K] fp32
    pending: int = 0
    h: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.h = torch.zeros(self.k, self.k)

    def add(self, x: torch.Tensor) -> None:
        """One batch ``x`` [B, T, K] (B windows)."""
        self.n += x.shape[0]
        self.rows.append(x.reshape(-1, self.k).float())
        self.pending += self.rows[-1].shape[0]
        if self.pending >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        x = torch.cat(self.rows) if len(self.rows) > 1 else self.rows[0]  # [T, K]
        self.rows, self.pending = [], 0
        x = x.to(self.dtype)
        for i0 in range(0, self.k, HESSIAN_BLOCK):
            i1 = min(self.k, i0 + HESSIAN_BLOCK)
            if self.dtype == torch.float32:
                self.h[i0:i1, i0:].addmm_(x[:, i0:i1].t(), x[:, i0:])  # [b, K - i0] += [b, T] @ [T, K - i0]
            else:  # summed in fp32 inside the product, rounded to bf16 once per BATCH_ROWS tokens
                self.h[i0:i1, i0:] += x[:, i0:i1].t().matmul(x[:, i0:]).float()

    def finish(self) -> Hessian:
        """The full [K, K] matrix (lower blocks copied from the upper ones), scaled by 2/N."""
        self._flush()
        for i0 in range(HESSIAN_BLOCK, self.k, HESSIAN_BLOCK):
            self.h[i0:, i0 - HESSIAN_BLOCK:i0].copy_(self.h[i0 - HESSIAN_BLOCK:i0, i0:].t())
        self.h.mul_(2 / self.n)
        return Hessian(self.h, self.n)


BATCH_ROWS = 2048  # tokens per update: 4 windows of 512 (the product's inner size; [2048, 12288] fp32 is 100 MB)
HESSIAN_BLOCK = 1024


@dataclass
class LayerHessians:
    """The Hessians of one decoder layer, filled by forward hooks while the calibration windows pass."""

    groups: Groups
    symmetric: bool = False  # the fast arithmetic's SymmetricHessian, else Olive's accumulation
    dtype: torch.dtype = torch.float32  # the SymmetricHessian's products
    by_input: dict[str, Hessian | SymmetricHessian] = field(default_factory=dict)  # first module path of a group
    handles: list = field(default_factory=list)

    def attach(self, layer: torch.nn.Module) -> None:
        """A forward hook on the first linear layer of each input group (its input is the group's)."""
        for group in self.groups:
            linear = layer.get_submodule(group[0])
            k = linear.in_features
            self.by_input[group[0]] = SymmetricHessian(k, self.dtype) if self.symmetric else Hessian(torch.zeros(k, k))
            self.handles.append(linear.register_forward_hook(self._hook(group[0])))

    def _hook(self, key: str):
        def hook(_module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
            self.by_input[key].add(inputs[0])
        return hook

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.by_input = {k: h.finish() if isinstance(h, SymmetricHessian) else h for k, h in self.by_input.items()}

    def take_group(self, group: tuple[str, ...]) -> Hessian:
        """The Hessian every module of ``group`` reads, dropped from here (the fast solve factors it once)."""
        return self.by_input.pop(group[0])

    def take(self, linear: str) -> Hessian:
        """The Hessian of module path ``linear``: a copy while another module of its group still needs it,
        the accumulated one itself (dropped from here) for the group's last module, so each is freed as
        soon as its last module is solved (GPTQ's solve changes the Hessian in place)."""
        group = next(g for g in self.groups if linear in g)
        if linear != group[-1]:
            h = self.by_input[group[0]]
            return Hessian(h.h.clone(), h.n)
        return self.by_input.pop(group[0])
