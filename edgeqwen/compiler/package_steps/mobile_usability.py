"""onnxruntime's mobile usability checker on each graph: its report is shipped in the artifact and
its NNAPI verdict (partitions, node coverage, unsupported ops) goes into the manifest.

Run before ``ort_format``: the checker reads ONNX files. It decides support from onnxruntime's
table of NNAPI ops and their documented conditions (onnxruntime/tools/mobile_helpers/), so it is
the same verdict app developers get from the tool, not a run on a phone.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeqwen.artifact import RuntimeSpec

REPORT_DIR = "usability"


def parse_nnapi(text: str) -> dict[str, Any]:
    """The NNAPI section of the checker's log."""
    section = text.split("Checking NNAPI", 1)[-1].split("================", 1)[0]
    found = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled", section)
    if not found:
        raise RuntimeError("the mobile usability checker's output has no NNAPI partition line")
    parts, handled, total = map(int, found.groups())
    sizes = re.search(r"Partition sizes: \[([\d, ]*)\]", section)
    unsupported = re.search(r"Unsupported ops: (.*)", section)
    verdict = re.search(r"Model should perform well with NNAPI as is: (\w+)", section)
    return {
        "partitions": parts,
        "nodes_supported": handled,
        "nodes_total": total,
        "coverage": round(handled / total, 4) if total else 0.0,
        "partition_sizes": [int(x) for x in sizes.group(1).split(",") if x.strip()] if sizes else [],
        "unsupported_ops": unsupported.group(1).strip().split(",") if unsupported else [],
        "performs_well": verdict.group(1) == "YES" if verdict else None,
    }


def check(onnx_file: Path) -> tuple[str, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                           str(onnx_file)], capture_output=True, text=True, check=True)
    text = proc.stdout + proc.stderr
    return text, parse_nnapi(text)


def run(folder: Path, runtime: RuntimeSpec) -> dict[str, Any]:
    static = runtime.static
    files = {role: g.file for role, g in static.graphs.items()} if static else {"model": runtime.model_file}
    (folder / REPORT_DIR).mkdir(exist_ok=True)
    record: dict[str, Any] = {}
    for role, name in files.items():
        text, nnapi = check(folder / name)
        report = f"{REPORT_DIR}/{Path(name).stem}.txt"
        (folder / report).write_text(text, encoding="utf-8")
        record[role] = {"report": report, "nnapi": nnapi}
    record["summary"] = "; ".join(f"{role} NNAPI {r['nnapi']['partitions']} partition(s), "
                                  f"{r['nnapi']['coverage']:.1%} of {r['nnapi']['nodes_total']} nodes"
                                  for role, r in record.items())
    return record
