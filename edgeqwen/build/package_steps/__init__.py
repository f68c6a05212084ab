"""Steps that change the artifact's files after packaging (format conversions for a device).

Each step is ``run(folder: Path, runtime: dict) -> dict``: it rewrites files in the artifact folder,
updates the runtime section it is given (e.g. ``model_file``) and returns a record for the manifest.
"""

from __future__ import annotations

import importlib
from typing import Callable

_STEPS = {
    "ort_format": "edgeqwen.build.package_steps.ort_format",
    "mobile_usability": "edgeqwen.build.package_steps.mobile_usability",
    "dml_operator_check": "edgeqwen.build.package_steps.dml_operator_check",
}


def known_steps() -> set[str]:
    return set(_STEPS)


def get_step(name: str) -> Callable[..., dict]:
    return importlib.import_module(_STEPS[name]).run
