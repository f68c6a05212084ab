"""ONNX -> ORT format, plus the operator list for a minimal onnxruntime build (mobile).

The ORT format loads without protobuf parsing and is what onnxruntime's mobile packages and reduced
builds take; ``model.required_operators.config`` is the input to ``build.py --include_ops_by_config``.
Graph optimisations are applied now ("Fixed" style, for ARM), so the phone does no fusion work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ORT_FILE = "model.ort"
OPS_FILE = "model.required_operators.config"


def run(folder: Path, runtime: dict[str, Any]) -> dict[str, Any]:
    onnx_file = folder / runtime["model_file"]
    out = folder / ".ort-convert"
    out.mkdir()
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_file),
                    "--output_dir", str(out), "--optimization_style", "Fixed", "--target_platform", "arm"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shutil.move(str(out / ORT_FILE), folder / ORT_FILE)
    shutil.move(str(out / OPS_FILE), folder / OPS_FILE)
    shutil.rmtree(out)
    # The ONNX graph and its external weights are not shipped: the ORT file holds the weights.
    removed = []
    for p in (onnx_file, folder / (onnx_file.name + ".data")):
        if p.exists():
            removed.append(p.name)
            p.unlink()
    cfg_path = folder / runtime["genai_config"]
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["filename"] = ORT_FILE
    cfg_path.write_text(json.dumps(cfg, indent=4))
    runtime.update(model_file=ORT_FILE, model_format="ort", operator_config=OPS_FILE)
    ops = [line for line in (folder / OPS_FILE).read_text().splitlines() if line and not line.startswith("#")]
    return {"model_file": ORT_FILE, "operator_config": OPS_FILE, "operator_lines": ops, "removed": removed,
            "optimization": "Fixed, arm"}
