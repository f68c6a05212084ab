"""Measure what `edgeqwen plan` estimates, on every artifact this machine can build, and fit its model.

For each checkpoint x profile: build (streaming exporter, no validation: speed and memory do not depend
on the weights' values), then one `edgeqwen bench` per context (prompt P tokens, decode at depth 0 and
at depth P), each in its own process so the peak RSS is that context's. The measurements go to
``measurements.json``; ``--fit`` refits the constants `plan` ships (``edgeqwen/plan/calibration.json``)
and writes the estimate-vs-measured table with leave-one-out errors (report.md, plan-error.png).

    python tools/make_tiny_qwen.py qwen2.5-0.5b-shape -o /work/cal/q05      # and the 1.5b/3b/7b shapes
    python benchmarks/plan_calibration.py --checkpoint /work/cal/q05 --target cpu-int4 --target cpu-int8 \\
        --contexts 128,2048 --work /work/cal
    python benchmarks/plan_calibration.py --fit        # after every measurement wanted is in

Measurements accumulate (a point already measured is kept unless --again), so runs can be split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORT = HERE / "reports" / "plan-calibration"
MEASUREMENTS = REPORT / "measurements.json"
EDGEQWEN = [sys.executable, "-m", "edgeqwen.cli"]


def log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def build(checkpoint: Path, target: str, work: Path) -> Path:
    out = work / f"{checkpoint.name}-{target}"
    if (out / "edgeqwen.json").exists():
        return out
    log(f"== build {checkpoint.name} -> {target}")
    subprocess.run([*EDGEQWEN, "build", str(checkpoint), "-t", target, "-o", str(out), "--no-validate", "-q",
                    "--force"], check=True, stdout=subprocess.DEVNULL)
    return out


def bench(artifact: Path, context: int, decode: int, reps: int, work: Path) -> dict:
    """One bench process: prefill ``context`` tokens; decode ``decode`` tokens at depth 0 and ``context``."""
    out = work / "bench" / f"{artifact.name}-{context}"
    subprocess.run([*EDGEQWEN, "bench", str(artifact), "-o", str(out), "--prompt-lengths", str(context),
                    "--depths", f"0,{context}", "--decode-tokens", str(decode), "--reps", str(reps)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def point(report: dict, context: int, decode: int) -> dict:
    s = report["speed"]
    return {"artifact": report["artifact"]["path"], "profile": report["artifact"]["profile"],
            "checkpoint": report["artifact"]["name"], "context": context, "capacity": context + decode + 2,
            "size_bytes": report["size_bytes"], "peak_rss_mb": report["peak_rss_mb"],
            "prefill_tokens_per_s": s["prefill_tokens_per_s"][str(context)]["mean"],
            "decode_tokens_per_s": {d: v["mean"] for d, v in s["decode_tokens_per_s"].items()},
            "load_s": report["load_s"]["mean"], "threads": report["threads"], "device": report["device"],
            "created": report["created"]}


def measure(args: argparse.Namespace) -> None:
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {"points": []}
    have = {(p["checkpoint"], p["profile"], p["context"]) for p in data["points"]}
    jobs = [(Path(c), t, n) for c in args.checkpoint for t in args.target for n in args.contexts]
    t0 = time.monotonic()
    for i, (ckpt, target, n) in enumerate(jobs, 1):
        config = json.loads((ckpt / "config.json").read_text())
        if (ckpt.name, target, n) in have and not args.again:
            log(f"[{i}/{len(jobs)}] {ckpt.name} {target} context {n}: measured already")
            continue
        if n + args.decode + 2 > config.get("max_position_embeddings", 1 << 30):
            continue
        art = build(ckpt, target, Path(args.work))
        reps = 1 if n >= 1024 or config["hidden_size"] >= 3000 else args.reps
        log(f"[{i}/{len(jobs)}] bench {art.name} context {n} ({time.monotonic() - t0:.0f} s elapsed)")
        p = point(bench(art, n, args.decode, reps, Path(args.work)), n, args.decode)
        p["checkpoint"], p["config"] = ckpt.name, config
        data["points"] = [q for q in data["points"] if (q["checkpoint"], q["profile"], q["context"])
                          != (ckpt.name, target, n)] + [p]
        REPORT.mkdir(parents=True, exist_ok=True)
        tmp = MEASUREMENTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, MEASUREMENTS)
        log(f"   size {p['size_bytes'] / 1e9:.2f} GB, peak {p['peak_rss_mb']} MB, prefill "
            f"{p['prefill_tokens_per_s']:.1f} tok/s, decode {p['decode_tokens_per_s']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], help="checkpoint folder (repeat)")
    ap.add_argument("--target", action="append", default=[], help="profile (repeat)")
    ap.add_argument("--contexts", default="128,2048", help="prompt lengths, one bench process each")
    ap.add_argument("--decode", type=int, default=32, help="decode tokens per point")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", default="plan-calibration-work", help="artifacts and bench folders")
    ap.add_argument("--again", action="store_true", help="measure points already in measurements.json again")
    ap.add_argument("--fit", action="store_true", help="refit edgeqwen/plan/calibration.json and write the report")
    args = ap.parse_args()
    args.contexts = [int(x) for x in args.contexts.split(",")]
    if args.checkpoint:
        measure(args)
    if args.fit:
        from edgeqwen.plan.fit import fit_and_report

        fit_and_report(json.loads(MEASUREMENTS.read_text()), REPORT, say=log)


if __name__ == "__main__":
    main()
