"""Build flows: checkpoint -> graphs -> packaged artifact files, one module per runtime backend.

A flow is ``run(ckpt, profile, work, art, progress, exporter=...) -> FlowOutput``: it writes the artifact's files
into ``art`` (``work`` is scratch space, removed afterwards) in two progress steps, and returns the
manifest sections it knows. The profile's ``backend`` picks the flow here and the runtime backend at
load time; a new kind of artifact is a new flow module plus one line in ``_FLOWS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeqwen.artifact import RuntimeSpec

_FLOWS = {
    "genai": "edgeqwen.compiler.flows.genai",  # Olive ModelBuilder (+ quantisation) -> dynamic-KV graph
    "static": "edgeqwen.compiler.flows.static",  # our static-shape export (+ Olive quantisation) -> 2 graphs
}


@dataclass
class FlowOutput:
    runtime: RuntimeSpec
    quantization: dict[str, Any]  # read back from the graphs, not from the profile
    package_steps: dict[str, Any]
    graph_passes: dict[str, Any] = field(default_factory=dict)
    # a checkpoint an Olive PyTorch pass quantised (in the build's work folder): validation checks the
    # artifact's weights are its values exactly
    quantized_checkpoint: Path | None = None


def known_flows() -> set[str]:
    return set(_FLOWS)


def get_flow(name: str) -> Callable[..., FlowOutput]:
    return importlib.import_module(_FLOWS[name]).run

