"""Local text that needs no network: the CPython standard library's top-level modules. Stdlib only.

One split serves everyone: the small trained model learns from the training files, static
quantisation calibrates on them, and quality reports score on the held-out files (the last
``HELD_OUT_FRACTION`` of them by name), which no model here was trained or calibrated on.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

HELD_OUT_FRACTION = 0.05
HELD_OUT_NAME = "cpython-stdlib-heldout"


def corpus_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in stdlib.glob("*.py") if p.is_file())


def split_corpus(eval_fraction: float = HELD_OUT_FRACTION) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): the last ``eval_fraction`` of the files, by name, are held out."""
    files = corpus_files()
    n_eval = max(1, int(len(files) * eval_fraction))
    return files[:-n_eval], files[-n_eval:]


def read_texts(files: list[Path]) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def held_out_text() -> tuple[str, str]:
    """(text, name) of the held-out split: the default text of quality reports."""
    return read_texts(split_corpus()[1]), HELD_OUT_NAME
