"""The one table of execution providers, used by target profiles, the compiler, the runtime and the CLI.

Stdlib only: the runtime imports it on devices without the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    name: str  # the short name in profiles, manifests and ``--provider``
    ort: str  # onnxruntime's execution provider name
    olive_device: str  # the device of Olive's accelerator spec for this provider
    # ORT-format conversion: "Fixed" bakes CPU-only fused ops in (fine where the CPU runs the graph);
    # "Runtime" keeps plain ops so an accelerator that takes whole graphs (NNAPI) gets every node.
    ort_optimization_style: str = "Fixed"


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        Provider("cpu", "CPUExecutionProvider", "cpu"),
        Provider("dml", "DmlExecutionProvider", "gpu"),
        Provider("nnapi", "NnapiExecutionProvider", "npu", ort_optimization_style="Runtime"),
    ]
}
NAMES: tuple[str, ...] = tuple(PROVIDERS)


def get(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown execution provider {name!r}; known: {', '.join(NAMES)}") from None
