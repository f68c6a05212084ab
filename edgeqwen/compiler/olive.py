"""Turn a profile's Olive passes into an Olive workflow and run it on a checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from edgeqwen import providers
from edgeqwen.compiler.olive_import import load_olive
from edgeqwen.compiler.progress import LayerCounter, LineFilter, Progress
from edgeqwen.targets import TargetProfile


def workflow_config(profile: TargetProfile, checkpoint: Path, work_dir: Path) -> dict[str, Any]:
    passes = {f"p{i}_{p.type.lower()}": {"type": p.type, **p.options} for i, p in enumerate(profile.olive_passes)}
    # Olive's ModelBuilder pass maps the accelerator's execution provider to the builder's --execution_provider.
    ep = providers.get(profile.execution_provider)
    return {
        "input_model": {"type": "HfModel", "model_path": str(checkpoint), "task": "text-generation"},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": ep.olive_device, "execution_providers": [ep.ort]}],
            }
        },
        "engine": {"target": "local_system", "log_severity_level": 3},
        "passes": passes,
        "output_dir": str(work_dir / "olive_out"),
        "cache_dir": str(work_dir / "olive_cache"),
        "no_artifacts": True,
    }


def run_olive(profile: TargetProfile, checkpoint: Path, work_dir: Path, progress: Progress, layers: int) -> Path:
    """Run the workflow; return the folder holding model.onnx, genai_config.json and tokenizer files."""
    # No network here or on most build machines: telemetry would only time out (Olive's: load_olive).
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    load_olive()
    from olive.workflows import run as olive_run

    config = workflow_config(profile, checkpoint, work_dir)
    logging.getLogger("olive").setLevel(logging.WARNING)
    logging.getLogger("olive.engine.engine").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(LineFilter(progress, LayerCounter(layers))):
        olive_run(config)
    out = work_dir / "olive_out"
    if not (out / "model.onnx").is_file():
        found = sorted(p.name for p in out.rglob("*.onnx")) if out.exists() else []
        raise RuntimeError(f"Olive finished without producing model.onnx in {out} (found: {found or 'nothing'})")
    return out


def run_olive_on_onnx(profile: TargetProfile, onnx_file: Path, work_dir: Path, progress: Progress,
                      calibration: Path | None = None) -> Path:
    """Run the profile's Olive passes on one ONNX graph (static builds); return the new graph's path.

    ``calibration``: recorded feeds (edgeqwen.compiler.static.calibration) for passes that need data;
    they get a data_config reading them through our registered Olive components.
    """
    load_olive()
    from olive.workflows import run as olive_run

    from edgeqwen.compiler.static import calibration as calib_module

    passes = {}
    for i, p in enumerate(profile.olive_passes):
        options = dict(p.options)
        if calibration is not None and p.type in _NEEDS_DATA:
            options["data_config"] = "calibration"
        passes[f"p{i}_{p.type.lower()}"] = {"type": p.type, **options}
    config: dict[str, Any] = {
        "input_model": {"type": "ONNXModel", "model_path": str(onnx_file)},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": [providers.get("cpu").ort]}]}},
        "engine": {"target": "local_system", "log_severity_level": 3},
        "passes": passes,
        "output_dir": str(work_dir / "olive_out"),
        "cache_dir": str(work_dir / "olive_cache"),
        "no_artifacts": True,
    }
    if calibration is not None:
        config["data_configs"] = [{
            "name": "calibration",
            "user_script": calib_module.__file__,
            "load_dataset_config": {"type": "edgeqwen_recorded_feeds", "params": {"path": str(calibration)}},
            "dataloader_config": {"type": "edgeqwen_unbatched"},
        }]
    logging.getLogger("olive").setLevel(logging.WARNING)
    logging.getLogger("olive.engine.engine").setLevel(logging.WARNING)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization's "consider pre-processing" advice: not for these graphs
    try:
        with contextlib.redirect_stdout(LineFilter(progress)):
            olive_run(config)
    finally:
        root.setLevel(level)
    found = sorted((work_dir / "olive_out").rglob("*.onnx"))
    if len(found) != 1:
        raise RuntimeError(f"Olive should have written one ONNX graph for {onnx_file.name}, found {found or 'none'}")
    return found[0]


# Olive passes that calibrate on data (static quantisation)
_NEEDS_DATA = {"OnnxStaticQuantization", "OnnxQuantization"}
