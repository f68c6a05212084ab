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


# The shared builds whose quantisation loss some test reads: scored when first built, so that the tests
# that read only their parity get the same build instead of a second one.
SCORED = {(name, "cpu-int4") for name in ("tiny-qwen2", "tiny-qwen2.5", "tiny-qwen3", "tiny-qwen3-tied")} | \
    {("tiny-qwen3", "android-cpu-int4")}


@pytest.fixture(scope="session")
def artifacts(checkpoints, tmp_path_factory):
    """artifacts(fixture, target, dtype="float32", loss_text=False) -> BuildResult, built once per session
    and only read by the tests that share it. Validated for parity as every build is; the quantisation
    loss on the built-in text (about 20 s a quantised build) only where a test asks for it with
    ``loss_text=True`` (otherwise the manifest records it as skipped)."""
    from edgeqwen.compiler.pipeline import build

    root = tmp_path_factory.mktemp("artifacts")
    built = {}

    def get(name: str, target: str, dtype: str = "float32", loss_text: bool = False):
        from edgeqwen.targets import load_profile

        loss_text = loss_text or (name, target) in SCORED or load_profile(target).quality.max_kl_mean is not None
        key = (name, target, dtype, loss_text)
        if not loss_text and (name, target, dtype, True) in built:
            return built[name, target, dtype, True]  # the same build with the loss scored as well
        if key not in built:
            tag = "-loss" if loss_text else ""
            built[key] = build(str(checkpoints(name, dtype)), target, root / f"{name}-{dtype}-{target}{tag}",
                               quiet=True, loss_text=loss_text)
        return built[key]

    return get
