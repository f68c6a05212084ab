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
class LayerHessians:
    """The Hessians of one decoder layer, filled by forward hooks while the calibration windows pass."""

    groups: Groups
    by_input: dict[str, Hessian] = field(default_factory=dict)  # first module path of a group -> Hessian
    handles: list = field(default_factory=list)

    def attach(self, layer: torch.nn.Module) -> None:
        """A forward hook on the first linear layer of each input group (its input is the group's)."""
        for group in self.groups:
            linear = layer.get_submodule(group[0])
            self.by_input[group[0]] = Hessian(torch.zeros(linear.in_features, linear.in_features))
            self.handles.append(linear.register_forward_hook(self._hook(group[0])))

    def _hook(self, key: str):
        def hook(_module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
            self.by_input[key].add(inputs[0])
        return hook

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def take(self, linear: str) -> Hessian:
        """The Hessian of module path ``linear``: a copy while another module of its group still needs it,
        the accumulated one itself (dropped from here) for the group's last module, so each is freed as
        soon as its last module is solved (GPTQ's solve changes the Hessian in place)."""
        group = next(g for g in self.groups if linear in g)
        if linear != group[-1]:
            h = self.by_input[group[0]]
            return Hessian(h.h.clone(), h.n)
        return self.by_input.pop(group[0])
