"""Which execution provider an engine really uses.

The manifest names the provider the artifact was built for (dml, nnapi, cpu). Where that provider is
missing from this machine's onnxruntime build (a Linux dev box running a DirectML artifact, desktop
Python running an NNAPI one) the engine falls back to the CPU provider with a warning, so the same
graphs can be tried and tested anywhere; ``provider="cpu"`` asks for that explicitly.
"""

from __future__ import annotations

import warnings

from edgeqwen.errors import ProviderUnavailable
from edgeqwen.providers import NAMES


def choose(requested: str | None, built_for: str, available: set[str]) -> str:
    """``available``: provider short names present in this install (always includes cpu)."""
    want = requested or built_for
    if want not in NAMES:
        raise ValueError(f"unknown execution provider {want!r}; known: {', '.join(NAMES)}")
    if want not in available:
        if requested:
            raise ProviderUnavailable(f"execution provider {want!r} is not available in this onnxruntime build "
                               f"(available: {', '.join(sorted(available))})")
        warnings.warn(f"this artifact was built for the {want!r} execution provider, which this onnxruntime "
                      f"build lacks; running its graph on the CPU provider instead", RuntimeWarning, stacklevel=3)
        return "cpu"
    return want
