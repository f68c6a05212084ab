"""Steps that change the artifact's files after packaging (format conversions for a device).

Each step is ``run(folder: Path, runtime: RuntimeSpec) -> dict``: it rewrites files in the artifact
folder, updates the runtime contract it is given (e.g. ``model_file``) and returns a record for the
manifest. A new step is a new module plus one line in ``_STEPS``.
"""

from __future__ import annotations

import importlib
from typing import Callable

_STEPS = {
    "ort_format": "edgeqwen.compiler.package_steps.ort_format",
    "mobile_usability": "edgeqwen.compiler.package_steps.mobile_usability",
    "dml_operator_check": "edgeqwen.compiler.package_steps.dml_operator_check",
}


def known_steps() -> set[str]:
    return set(_STEPS)


def get_step(name: str) -> Callable[..., dict]:
    return importlib.import_module(_STEPS[name]).run
