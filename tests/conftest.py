"""Shared fixtures: tiny Qwen checkpoints built locally once per session, and artifacts built from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """checkpoints(name, dtype="float32") -> folder of a locally built fixture checkpoint."""
    from edgeqwen.testmodels.fixtures import make_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, dtype: str = "float32") -> Path:
        key = (name, dtype)
        if key not in made:
            made[key] = make_checkpoint(name, root / f"{name}-{dtype}", dtype=dtype)
        return made[key]

    return get


@pytest.fixture(scope="session")
def artifacts(checkpoints, tmp_path_factory):
    """artifacts(fixture, target, dtype="float32") -> BuildResult, built once per session."""
    from edgeqwen.compiler.pipeline import build

    root = tmp_path_factory.mktemp("artifacts")
    built = {}

    def get(name: str, target: str, dtype: str = "float32"):
        key = (name, target, dtype)
        if key not in built:
            built[key] = build(str(checkpoints(name, dtype)), target, root / f"{name}-{dtype}-{target}", quiet=True)
        return built[key]

    return get
