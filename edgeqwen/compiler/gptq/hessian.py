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

    def take(self) -> torch.Tensor:
        """The [K, K] matrix, no longer held here: its taker's last reference frees it (a caller's argument
        would keep it alive through the whole call)."""
        h, self.h = self.h, torch.empty(0)
        return h


@dataclass
class SymmetricHessian:
    """The same 2/N sum of x x^T, for the fast arithmetic: the windows' rows gathered ``BATCH_ROWS`` at a time
    and only the blocks on and above the diagonal multiplied (x^T x is symmetric: 56-62 % of the products
    for K of 4,096-12,288), mirrored once at the end. In fp32 equal to Hessian's up to the order of the
    sums. Kept in fp32 even where the forwards run bf16: bf16 products (1.85x faster at [2048 x 12288]) put
    the Hessian 0.13-0.18 % off, which cost GPTQ's own objective up to 1 % (Qwen3-8B shape, layer 0, 32 x 512
    tokens, tr((W - Q) H (W - Q)^T) under the fp32 H: q 1.00, k/v 1.001, o 1.003, gate 1.010)."""

    k: int
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
        for i0 in range(0, self.k, HESSIAN_BLOCK):
            i1 = min(self.k, i0 + HESSIAN_BLOCK)
            self.h[i0:i1, i0:].addmm_(x[:, i0:i1].t(), x[:, i0:])  # [b, K - i0] += [b, T] @ [T, K - i0]

    def finish(self) -> Hessian:
        """The full [K, K] matrix (lower blocks copied from the upper ones), scaled by 2/N."""
        self._flush()
        for i0 in range(HESSIAN_BLOCK, self.k, HESSIAN_BLOCK):
            self.h[i0:, i0 - HESSIAN_BLOCK:i0].copy_(self.h[i0 - HESSIAN_BLOCK:i0, i0:].t())
        self.h.mul_(2 / self.n)
        return Hessian(self.h, self.n)


BATCH_ROWS = 2048  # tokens per update: 4 windows of 512 (the product's inner size; [2048, 12288] fp32 is 100 MB)
HESSIAN_BLOCK = 1024


class Enough(Exception):
    """Raised by the last Hessian's hook: this calibration window has given every Hessian its input."""


@dataclass
class LayerHessians:
    """The Hessians of one decoder layer, filled by forward hooks while the calibration windows pass."""

    groups: Groups
    symmetric: bool = False  # the fast arithmetic's SymmetricHessian, else Olive's accumulation
    by_input: dict[str, Hessian | SymmetricHessian] = field(default_factory=dict)  # first module path of a group
    handles: list = field(default_factory=list)

    def attach(self, layer: torch.nn.Module) -> None:
        """A forward pre-hook on the first linear layer of each input group (its input is the group's). The
        last group's (the MLP's down projection, the layer's last linear) ends the window's pass there
        (``Enough``): what follows it feeds no Hessian (a quarter of an 8B layer's linear work)."""
        for n, group in enumerate(self.groups):
            linear = layer.get_submodule(group[0])
            k = linear.in_features
            self.by_input[group[0]] = SymmetricHessian(k) if self.symmetric else Hessian(torch.zeros(k, k))
            last = n == len(self.groups) - 1
            self.handles.append(linear.register_forward_pre_hook(self._hook(group[0], last)))

    def _hook(self, key: str, last: bool):
        def hook(_module: torch.nn.Module, args: tuple) -> None:
            self.by_input[key].add(args[0])
            if last:
                raise Enough
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
