"""ONNX -> ORT format, plus the operator list for a minimal onnxruntime build (mobile).

The ORT format loads without protobuf parsing and is what onnxruntime's mobile packages and reduced
builds take; ``required_operators.config`` (one for all graphs) is the input to ``build.py --include_ops_by_config``.
CPU artifacts are optimised now ("Fixed" style, for ARM), so the phone does no fusion work. NNAPI
artifacts use the "Runtime" style: only basic optimisations are baked in, because the CPU-only fused
ops of the full level would take nodes away from NNAPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeqwen import providers
from edgeqwen.artifact import RuntimeSpec

OPS_FILE = "required_operators.config"


def _convert(onnx_files: list[Path], folder: Path, style: str) -> None:
    """Convert the given graphs together (one operator config covers them all) and replace them by
    ``<stem>.ort``; the ONNX files are not shipped, the ORT files hold the weights."""
    inp, out = folder / ".ort-in", folder / ".ort-out"
    inp.mkdir()
    for f in onnx_files:
        for p in (f, folder / (f.name + ".data")):
            if p.exists():
                os.replace(p, inp / p.name)
    cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(inp),
           "--output_dir", str(out), "--optimization_style", style]
    if style == "Fixed":
        cmd += ["--target_platform", "arm"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # the tool names Runtime-style outputs <stem>.with_runtime_opt.ort
    suffix = ".with_runtime_opt.ort" if style == "Runtime" else ".ort"
    for f in onnx_files:
        os.replace(out / (f.stem + suffix), folder / (f.stem + ".ort"))
    (config,) = out.glob("required_operators*.config")
    os.replace(config, folder / OPS_FILE)
    shutil.rmtree(inp)
    shutil.rmtree(out)


def run(folder: Path, runtime: RuntimeSpec) -> dict[str, Any]:
    style = providers.get(runtime.execution_provider).ort_optimization_style
    static = runtime.static
    if static:
        files = [folder / g.file for g in static.graphs.values()]
    else:
        files = [folder / runtime.model_file]
    removed = [p.name for f in files for p in (f, folder / (f.name + ".data")) if p.exists()]
    _convert(files, folder, style)
    if static:
        graphs = {role: replace(g, file=Path(g.file).stem + ".ort") for role, g in static.graphs.items()}
        runtime.static = replace(static, graphs=graphs)
        record = {"graphs": {role: g.file for role, g in graphs.items()}}
    else:
        ort_file = files[0].stem + ".ort"
        cfg_path = folder / runtime.genai_config
        cfg = json.loads(cfg_path.read_text())
        cfg["model"]["decoder"]["filename"] = ort_file
        cfg_path.write_text(json.dumps(cfg, indent=4))
        runtime.model_file = ort_file
        record = {"model_file": ort_file}
    runtime.model_format, runtime.operator_config = "ort", OPS_FILE
    ops = [line for line in (folder / OPS_FILE).read_text().splitlines() if line and not line.startswith("#")]
    return {**record, "operator_config": OPS_FILE, "operator_lines": ops, "removed": removed,
            "optimization": style + (", arm" if style == "Fixed" else "")}
