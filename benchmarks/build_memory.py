#!/usr/bin/env python3
"""Peak memory and time of `edgeqwen build`, per checkpoint x profile, measured by /usr/bin/time -v.

Each build runs in its own process under GNU time (maximum resident set size: the figure the
real-sizes issue bounds); the manifest adds the per-step timings and the peak RSS after each step,
so the table says where the peak happens (export or validation).

    python benchmarks/build_memory.py --checkpoint Q05 --checkpoint Q15 [--target cpu-int4 ...] \
        [--exporter streaming|olive] [--no-validate] [--merge] [-o benchmarks/reports/build-memory]

Checkpoints are made locally, e.g. ``python tools/make_tiny_qwen.py qwen2.5-1.5b-shape -o Q15
--dtype bfloat16``. Artifacts are written to a scratch folder and removed after each build unless
--keep is given (a 7B artifact is 4 GB).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report_files import write_report

GENAI = ["cpu-int4", "cpu-int8", "cpu-fp32", "android-cpu-int4", "android-cpu-int4-fast", "directml-int4", "directml-fp16"]
SCHEMA = "edgeqwen.bench.build-memory/1"
EXPORT_STEPS = ("Streaming export", "Static graphs", "Olive passes")  # the flows' first step titles


def one_build(ckpt: Path, target: str, out: Path, exporter: str, validate: bool, log) -> dict:
    edgeqwen = Path(sys.executable).with_name("edgeqwen")
    cmd = ["/usr/bin/time", "-v", str(edgeqwen), "build", str(ckpt), "-t", target, "-o", str(out), "--force",
           "--exporter", exporter] + ([] if validate else ["--no-validate"])
    log("== " + " ".join(cmd[2:]))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    row = {"checkpoint": ckpt.name, "target": target, "exporter": exporter, "validated": validate,
           "exit_status": r.returncode, "peak_rss_mb": peak_kb // 1024, "seconds": round(wall, 1)}
    manifest = out / "edgeqwen.json"
    if not manifest.is_file():  # a rejected build keeps its manifest beside the name it would have had
        manifest = out.with_name(out.name + ".rejected") / "edgeqwen.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        row["step_seconds"] = m["build"].get("step_seconds", {})
        row["peak_rss_mb_after_step"] = m["build"].get("peak_rss_mb_after_step", {})
        row["artifact_bytes"] = sum(f["bytes"] for f in m["files"].values())
        row["parameters"] = m["source"]["parameters"]
        if validate:
            row["validation_passed"] = m["validation"].get("passed")
            row["reference"] = m["validation"].get("reference")
    if r.returncode != 0:
        row["error"] = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
    log(f"   peak {row['peak_rss_mb']} MB, {row['seconds']} s, exit {r.returncode}")
    return row


def markdown(report: dict) -> str:
    lines = ["# Build peak memory (`/usr/bin/time -v`, maximum resident set size)", "",
             (f"exporter `{report['exporter']}`, validation {'on' if report['validate'] else 'off'}, "
              f"{report['machine']}"), "",
             "| checkpoint | parameters | target | peak RSS | of it: export | wall time | artifact | status |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in report["builds"]:
        params = r.get("parameters", 0)
        # the manifest's peak RSS after each step is the peak so far: after the export step, the export's
        steps = r.get("peak_rss_mb_after_step", {})
        export = next((v for k, v in steps.items() if k.startswith(EXPORT_STEPS)), None)
        status = "ok" if r["exit_status"] == 0 else f"exit {r['exit_status']}: {r.get('error', '')}"
        if r.get("validation_passed") is False:
            status = "built; validation failed its bound"
        size = f"{r['artifact_bytes'] / 2**30:.2f} GiB" if r.get("artifact_bytes") else "-"
        lines.append(f"| {r['checkpoint']} | {params / 1e9:.2f}B | {r['target']} | {r['peak_rss_mb']} MB | "
                     f"{export or '-'} MB | {r['seconds']:.0f} s | {size} | {status} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ckpts = sorted({r["checkpoint"] for r in report["builds"]})
    targets = list(dict.fromkeys(r["target"] for r in report["builds"]))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(targets), 4))
    width = 0.8 / max(1, len(ckpts))
    for i, c in enumerate(ckpts):
        vals = [next((r["peak_rss_mb"] / 1024 for r in report["builds"] if r["checkpoint"] == c and r["target"] == t),
                     0) for t in targets]
        ax.bar([j + i * width for j in range(len(targets))], vals, width, label=c)
    ax.set_xticks([j + width * (len(ckpts) - 1) / 2 for j in range(len(targets))], targets, rotation=20)
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title(f"edgeqwen build peak memory ({report['exporter']} exporter)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, action="append", default=[])
    p.add_argument("--merge", action="store_true", help="add these builds to the output folder's report.json")
    p.add_argument("--target", action="append", help=f"profiles (default: the genai ones, {', '.join(GENAI)})")
    p.add_argument("--exporter", default="streaming", choices=("streaming", "olive"))
    p.add_argument("--no-validate", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the artifacts in this folder")
    p.add_argument("-o", "--output", type=Path, default=Path("benchmarks/reports/build-memory"))
    args = p.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    from edgeqwen.bench.device import device_facts

    facts = device_facts()
    old = args.output / "report.json"
    previous = json.loads(old.read_text())["builds"] if args.merge and old.is_file() else []
    report = {"schema": SCHEMA, "exporter": args.exporter, "validate": not args.no_validate, "device": facts,
              "machine": f"{facts.get('cpu', '?')}, {facts.get('usable_cores', '?')} cores, {facts.get('ram_gb', '?')} GB",
              "builds": previous}
    with tempfile.TemporaryDirectory(prefix="edgeqwen-build-memory-", dir=args.keep) as scratch:
        for ckpt in args.checkpoint:
            for target in args.target or GENAI:
                out = Path(scratch) / f"{ckpt.name}-{target}"
                report["builds"].append(one_build(ckpt, target, out, args.exporter, not args.no_validate, log))
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(out.with_name(out.name + ".rejected"), ignore_errors=True)
    print(write_report(args.output, report, markdown, plot, "build-memory.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
