"""Versions of the packages that shaped an artifact, for the manifest."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("edgeqwen", "olive-ai", "onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir", "transformers",
            "torch", "tokenizers", "numpy")


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
