"""Turn a profile's Olive passes into an Olive workflow and run it on a checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from edgeqwen.build.progress import LineFilter, Progress
from edgeqwen.targets import TargetProfile

# Olive's ModelBuilder pass maps the accelerator's execution provider to the builder's --execution_provider.
_EP = {
    "cpu": "CPUExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def workflow_config(profile: TargetProfile, checkpoint: Path, work_dir: Path) -> dict[str, Any]:
    passes = {f"p{i}_{p.type.lower()}": {"type": p.type, **p.options} for i, p in enumerate(profile.olive_passes)}
    device = "gpu" if profile.execution_provider == "dml" else "cpu"
    return {
        "input_model": {"type": "HfModel", "model_path": str(checkpoint), "task": "text-generation"},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": device, "execution_providers": [_EP[profile.execution_provider]]}],
            }
        },
        "engine": {"target": "local_system", "log_severity_level": 3},
        "passes": passes,
        "output_dir": str(work_dir / "olive_out"),
        "cache_dir": str(work_dir / "olive_cache"),
        "no_artifacts": True,
    }


def run_olive(profile: TargetProfile, checkpoint: Path, work_dir: Path, progress: Progress) -> Path:
    """Run the workflow; return the folder holding model.onnx, genai_config.json and tokenizer files."""
    # No network here or on most build machines: Olive's telemetry would only time out.
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from olive.workflows import run as olive_run

    config = workflow_config(profile, checkpoint, work_dir)
    logging.getLogger("olive").setLevel(logging.WARNING)
    logging.getLogger("olive.engine.engine").setLevel(logging.WARNING)
    keep = ("Reading layer", "Reading embedding", "Reading LM head", "Saving ONNX", "GroupQueryAttention")
    with contextlib.redirect_stdout(LineFilter(progress, keep)):
        olive_run(config)
    out = work_dir / "olive_out"
    if not (out / "model.onnx").is_file():
        found = sorted(p.name for p in out.rglob("*.onnx")) if out.exists() else []
        raise RuntimeError(f"Olive finished without producing model.onnx in {out} (found: {found or 'nothing'})")
    return out
