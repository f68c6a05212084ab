"""Our own graph passes, one per module, run after the profile's Olive passes.

Each pass is ``run(model: onnx.ModelProto, ctx: PassContext) -> dict`` and returns a short record of
what it changed (kept in the manifest). The registry maps names used in profiles to modules; modules
are imported only when a pass runs, so profiles validate without onnx installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from edgeqwen.model.spec import ModelSpec

_PASSES = {
    "restore_io_names": "edgeqwen.compiler.passes.restore_io_names",
    "share_tied_embeddings": "edgeqwen.compiler.passes.share_tied_embeddings",
    "rope_caches": "edgeqwen.compiler.passes.rope_caches",
}


@dataclass
class PassContext:
    tied_embeddings: bool
    genai_config: dict[str, Any]
    spec: ModelSpec | None = None  # the checkpoint's (passes that read it: rope_caches)



def known_passes() -> set[str]:
    return set(_PASSES)


def get_pass(name: str) -> Callable[..., dict[str, Any]]:
    return importlib.import_module(_PASSES[name]).run
