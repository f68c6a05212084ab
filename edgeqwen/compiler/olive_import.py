"""Olive imported in a thread of its own, so no frame of the build is kept alive by it.

``import olive`` imports optuna, whose ``try_import`` keeps the ModuleNotFoundError of every optional backend it
lacks (redis here). An exception's traceback holds the frame that raised it, and every frame holds its caller
(``f_back``): imported for the first time inside a GPTQ layer's solve, that chain kept the solve's caller
frames, and with them the layer being solved (its fp32 weights: 0.8 GB for an 8B layer), alive for the rest
of the build; a build's own frames would stay alive after it returned. Imported from a fresh thread, the chain
ends at that thread's start, which holds nothing. Every later ``from olive... import`` finds the package
loaded.
"""

from __future__ import annotations

import importlib
import os
import threading
from functools import cache


@cache
def load_olive() -> None:
    """Import olive (and optuna under it) once, away from the caller's stack, its telemetry off (no network on
    most build machines: it would only time out); an ImportError is the caller's."""
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module("olive")
        except BaseException as e:  # handed to the caller's thread, raised there
            failure.append(e)

    t = threading.Thread(target=run, name="import-olive")
    t.start()
    t.join()
    if failure:
        raise failure[0]
