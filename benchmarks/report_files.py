"""Every benchmark leaves the same three files: report.json (the data), report.md (the table people
read) and a plot. One writer, so they never disagree on names or order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def write_report(output: Path, report: dict[str, Any], markdown: Callable[[dict], str],
                 plot: Callable[[dict, Path], None], png: str) -> str:
    """Write the three files into ``output``; return the Markdown (for printing)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (output / "report.md").write_text(md)
    plot(report, output / png)
    return md
