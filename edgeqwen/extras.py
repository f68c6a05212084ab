"""Which optional extra a command needs, checked before any heavy import so a missing one is a
one-line message instead of a traceback. Stdlib only."""

from __future__ import annotations

import importlib.util

from edgeqwen.errors import EdgeQwenError

# extra -> the modules whose absence means the extra is not installed
EXTRAS: dict[str, tuple[str, ...]] = {
    "build": ("torch", "transformers", "onnx", "olive", "safetensors"),
    "bench": ("matplotlib",),
    "serve": ("starlette", "uvicorn", "prometheus_client", "llguidance"),
}


def missing(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, what: str) -> None:
    """Raise a one-line error naming the extra ``what`` (e.g. "edgeqwen build") needs."""
    gone = missing(extra)
    if gone:
        raise EdgeQwenError(f"{what} needs the [{extra}] extra ({', '.join(gone)} not installed): "
                            f"pip install 'edgeqwen[{extra}]'")
