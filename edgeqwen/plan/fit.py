"""Fit the plan's coefficients to measured builds and benches, and measure the fit's error honestly:
each artifact's figures are predicted by a fit that saw no artifact of its checkpoint (leave one
checkpoint out).

Input: ``benchmarks/reports/plan-calibration/measurements.json`` (``benchmarks/plan_calibration.py``).
Output: ``edgeqwen/plan/calibration.json`` (shipped), report.md and plan-error.png beside the measurements.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeqwen.model.spec import parse_spec
from edgeqwen.plan.catalogue import Shape
from edgeqwen.plan.model import (
    FEATURES,
    QUANTITIES,
    UNITS,
    Calibration,
    predict,
    readable,
    shown,
)
from edgeqwen.plan.probe import probe
from edgeqwen.plan.storage import Storage, storage, weight_bytes
from edgeqwen.targets import load_profile

CALIBRATION = Path(__file__).with_name("calibration.json")
# Known, not fitted: genai allocates the KV buffer for the whole capacity up front (past and present share
# it), so its bytes count once. Fitted, the Qwen2.5 shapes' 2 KV heads left it unconstrained (6.5x), and
# Qwen3's 8 KV heads then extrapolated to GiBs of phantom memory.
FIXED = {"memory": {"kv": 1.0}}


def _rows(points: list[dict[str, Any]]) -> dict[str, list[tuple[str, dict[str, float], float, str]]]:
    """quantity -> (artifact, features, measured, where) rows; times in seconds, memory in bytes."""
    rows: dict[str, list] = {q: [] for q in ("memory", "decode", "prefill")}
    for p in points:
        shape, s = Shape.from_config(p["config"]), storage(load_profile(p["profile"]))
        art = f"{p['checkpoint']}/{Path(p['artifact']).name}"  # left out together: a whole checkpoint
        n = p["context"]
        rows["memory"].append((art, FEATURES["memory"](shape, s, p["capacity"], n), p["peak_rss_mb"] * 2**20,
                                f"context {p['capacity']}"))
        rows["prefill"].append((art, FEATURES["prefill"](shape, s, n), n / p["prefill_tokens_per_s"], f"prompt {n}"))
        for depth, tps in p["decode_tokens_per_s"].items():
            rows["decode"].append((art, FEATURES["decode"](shape, s, int(depth)), 1.0 / tps, f"depth {depth}"))
    return rows


def nonnegative_fit(rows: list[tuple], fixed: dict[str, float] | None = None) -> dict[str, float]:
    """Least squares on relative error (each row weighted by 1/measured), coefficients kept >= 0 by dropping
    the most negative feature and refitting: every term is a physical cost that cannot be negative.
    ``fixed``: coefficients known, not fitted (their terms are taken off the measurement first)."""
    fixed = fixed or {}
    names = sorted({k for _, f, *_ in rows for k in f} - set(fixed))
    rest = [y - sum(c * f.get(k, 0.0) for k, c in fixed.items()) for _, f, y, *_ in rows]
    while True:
        a = np.array([[f.get(k, 0.0) / y for k in names] for _, f, y, *_ in rows])
        x, *_ = np.linalg.lstsq(a, np.array([r / y for r, (_, _, y, *_) in zip(rest, rows)]), rcond=None)
        if (x >= 0).all() or len(names) == 1:
            return {**fixed, **{k: float(max(v, 0.0)) for k, v in zip(names, x)}}
        names.pop(int(np.argmin(x)))


def leave_one_out(rows: list[tuple], fixed: dict[str, float] | None = None) -> list[float | None]:
    """Relative error of each row's prediction by a fit that saw no artifact of its checkpoint: the plan
    predicts shapes it never measured."""
    out = []
    for art, f, y, *_ in rows:
        rest = [r for r in rows if r[0].split("/")[0] != art.split("/")[0]]
        p = predict(nonnegative_fit(rest, fixed), f) if rest else None
        out.append(None if p is None else p / y - 1.0)
    return out


def _size_rows(points: list[dict[str, Any]]) -> tuple[int, list[tuple[str, int, int]]]:
    """files_bytes (median of size minus initializers) and (artifact, estimate, measured) per artifact."""
    seen: dict[str, tuple[int, int]] = {}
    for p in points:
        spec, s = parse_spec(p["config"]), storage(load_profile(p["profile"]))
        seen[p["artifact"]] = (weight_bytes(Shape.of(spec), s, spec.positions), p["size_bytes"])
    files = int(statistics.median(m - w for w, m in seen.values()))
    return files, [(a, w + files, m) for a, (w, m) in seen.items()]


def fit(data: dict[str, Any], probe_figures: dict[str, float] | None = None) -> Calibration:
    points = data["points"]
    rows = _rows(points)
    coefficients = {q: nonnegative_fit(r, FIXED.get(q)) for q, r in rows.items()}
    files, sizes = _size_rows(points)
    table, errors = [], {"size": max(abs(e / m - 1) for _, e, m in sizes)}
    for q, r in rows.items():
        loo = leave_one_out(r, FIXED.get(q))
        # errors in what the plan shows: bytes for memory, tokens/s (1 / time) for decode and prefill
        shown = [None if e is None else (e if q == "memory" else 1 / (1 + e) - 1) for e in loo]
        known = [abs(e) for e in shown if e is not None]
        errors[q] = max(known) if known else float("nan")
        for (art, f, y, at), e, e_shown in zip(r, loo, shown):
            table.append({"quantity": q, "artifact": art.split("/")[1], "at": at, "measured": y,
                          "fitted": predict(coefficients[q], f), "left_out": None if e is None else y * (1 + e),
                          "left_out_error": e_shown, "features": f})
    for art, e, m in sizes:
        table.append({"quantity": "size", "artifact": Path(art).name, "measured": m, "fitted": e, "left_out": e,
                      "left_out_error": e / m - 1})
    device = points[0]["device"]
    return Calibration(device, probe_figures or probe(), files, coefficients, errors, table)


def markdown(cal: Calibration) -> str:
    lines = ["# Plan calibration: estimate vs measured", "",
             f"Device: {cal.device.get('cpu')}, {cal.device.get('usable_cores')} cores, "
             f"{cal.device.get('ram_gb')} GB; probe {cal.probe['bandwidth_gb_s']:.1f} GB/s read, "
             f"{cal.probe['gemm_gflops']:.0f} GFLOP/s fp32 GEMM.", "",
             "Errors are leave-one-checkpoint-out: each artifact predicted by a fit that saw no artifact of its "
             "checkpoint. Decode points are single runs of 32 tokens (two for the short contexts), prefill one "
             "prompt: this machine's run-to-run noise is part of the error.", "",
             "| quantity | largest error left out |", "|---|---:|"]
    lines += [f"| {q} | {cal.errors[q] * 100:.1f} % |" for q in QUANTITIES]
    lines += ["", "| quantity | artifact | at | measured | fit (all) | left out | error left out |",
              "|---|---|---|---:|---:|---:|---:|"]
    for p in cal.points:
        q, f = p["quantity"], p.get("features")
        e = p["left_out_error"]
        lines.append(f"| {q} | {p['artifact']} | {p.get('at', '')} | {readable(q, p['measured'], f)} | "
                     f"{'n/a' if p['fitted'] is None else readable(q, p['fitted'], f)} | "
                     f"{'n/a' if e is None else readable(q, p['left_out'], f)} | "
                     f"{'n/a' if e is None else f'{e * 100:+.1f} %'} |")
    lines += ["", "Coefficients:", "", "```", json.dumps(cal.coefficients, indent=1), "```"]
    return "\n".join(lines) + "\n"


def plot(cal: Calibration, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(4 * len(QUANTITIES), 4))
    for ax, q in zip(axes, QUANTITIES):
        pts = [p for p in cal.points if p["quantity"] == q and p["left_out_error"] is not None]
        xs = [shown(q, p["measured"], p.get("features")) for p in pts]
        ys = [shown(q, p["left_out"], p.get("features")) for p in pts]
        ax.loglog(xs, ys, "o")
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{q} (max {cal.errors[q] * 100:.0f} % off)")
        ax.set_xlabel(f"measured ({UNITS[q]})")
        ax.set_ylabel(f"estimated, checkpoint left out ({UNITS[q]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def fit_and_report(data: dict[str, Any], report: Path, say: Callable[[str], None] = print) -> Calibration:
    cal = fit(data)
    tmp = CALIBRATION.with_suffix(".tmp")
    tmp.write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    os.replace(tmp, CALIBRATION)
    report.mkdir(parents=True, exist_ok=True)
    (report / "report.md").write_text(markdown(cal))
    plotted = plot(cal, report / "plan-error.png")
    say(f"wrote {CALIBRATION}, {report / 'report.md'}" + (", plan-error.png" if plotted else ""))
    say("largest left-out errors: " + ", ".join(f"{q} {cal.errors[q] * 100:.1f} %" for q in QUANTITIES))
    return cal


__all__ = ["fit", "fit_and_report", "leave_one_out", "nonnegative_fit", "Storage"]
