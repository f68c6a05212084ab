"""The plan as a person reads it in a terminal, and ``--explain``: how the figures are made and how far off
they were on every artifact measured here."""

from __future__ import annotations

from typing import Any

from edgeqwen.plan.model import QUANTITIES, Calibration, readable


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _tps(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _pct(v: float) -> str:
    return f"±{v * 100:.0f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def render(result: dict[str, Any], limit: int = 15) -> str:
    e = result["errors"]
    lines = [f"Plan for {result['device']}: {result['ram_bytes'] / 2**30:.1f} GiB, context {result['context']:,} "
             f"tokens" + (f", task {result['task']}" if result["task"] else "") +
             f", decode >= {result['min_tokens_per_s']:g} tok/s", ""]
    fits = result["fits"]
    if fits:
        header = ["model", "profile", "size GiB", f"memory GiB {_pct(e['memory'])}",
                  f"prefill tok/s {_pct(e['prefill'])}", f"decode tok/s {_pct(e['decode'])}", "build GiB"]
        rows = [[r["model"], r["profile"], _gib(r["size_bytes"]), _gib(r["memory_bytes"]),
                 _tps(r["prefill_tokens_per_s"]), _tps(r["decode_tokens_per_s"]), _gib(r["build_bytes"])]
                for r in fits[:limit]]
        lines += _table(header, rows)
        if len(fits) > limit:
            lines.append(f"... and {len(fits) - limit} more that fit (--json lists all)")
    else:
        lines.append("Nothing in the catalogue fits; closest misses below.")
    lines += ["", f"Memory is the peak with the whole context prefilled at once; decode at half the context; "
                  f"prefill of a {result['prompt_tokens']}-token prompt. Errors: largest seen on artifacts built "
                  f"here (`edgeqwen plan --explain`). Build: the peak of `edgeqwen build --no-validate` on the "
                  f"machine that builds (its largest step: export, or GPTQ one layer at a time); validation then "
                  f"runs the artifact (its memory column) and the fp32 reference one layer at a time."]
    rejected = _first_per_model(result["rejected"])
    if rejected:
        lines += ["", "Do not fit:"]
        lines += [f"  {r['model']:<28} {r['profile']:<12} {r['why_not']}" for r in rejected]
    if result["not_buildable"]:
        lines += ["", "Not yet buildable:"]
        lines += [f"  {m['model']:<28} {m['why_not']}" for m in result["not_buildable"]]
    return "\n".join(lines)


def _first_per_model(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per model: its smallest profile's reason (if that does not fit, none does)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["model"] not in best or r["memory_bytes"] < best[r["model"]]["memory_bytes"]:
            best[r["model"]] = r
    return list(best.values())


def explain(cal: Calibration, how: str) -> str:
    c = cal.coefficients
    lines = ["How `edgeqwen plan` estimates (edgeqwen/plan/model.py; fitted by benchmarks/plan_calibration.py):", "",
             f"- size: the exact bytes each profile's weight formats take for the model's shape, + {cal.files_bytes / 1e6:.1f} MB "
             f"of other files (tokenizer, graph), measured.",
             "- memory: runtime base + weights x per-kernel factor + the KV buffer for the context + prefill "
             "activations (n x (intermediate + hidden)) + attention scores (heads x n^2).",
             "- decode (memory-bound): s/token = overhead + weight bytes read / fitted bandwidth per kernel family "
             "+ cost per cached token.",
             "- prefill (compute-bound): s = n x (overhead + multiply-adds per token / fitted throughput) + "
             "attention's n^2 term.",
             f"- speed on this device: {how}.",
             "- build: the peak of `edgeqwen build --no-validate` (edgeqwen/build_memory.py): the streaming export "
             "(~0.6 GiB at any size) or the profile's PyTorch quantisation, GPTQ one decoder layer at a time (one "
             "fp32 layer + its Hessians + the calibration states), Olive's whole-model passes 1.5 GiB + 8 bytes "
             "per parameter.", "",
             f"Calibration device: {cal.device.get('cpu')}, {cal.device.get('usable_cores')} cores, "
             f"{cal.device.get('ram_gb')} GB RAM, onnxruntime {cal.device.get('packages', {}).get('onnxruntime')}, "
             f"onnxruntime-genai {cal.device.get('packages', {}).get('onnxruntime-genai')}.", "",
             "Fitted:"]
    if "base" in c["memory"]:
        lines.append(f"  memory base {c['memory']['base'] / 2**20:.0f} MiB; weights x " + ", ".join(
            f"{k.split('_', 1)[1]} {v:.2f}" for k, v in c["memory"].items() if k.startswith("weights_")))
    lines.append("  decode bandwidth " + ", ".join(
        f"{k.split('_', 1)[1]} {1 / v / 1e9:.1f} GB/s" for k, v in c["decode"].items() if k.startswith("bytes_") and v)
        + f"; overhead {c['decode'].get('per_token', 0) * 1e3:.2f} ms/token")
    lines.append("  prefill throughput " + ", ".join(
        f"{k.split('_', 1)[1]} {1 / v / 1e9:.1f} G multiply-adds/s" for k, v in c["prefill"].items()
        if k.startswith("macs_") and v))
    lines += ["", "Error of the estimate on every artifact built and benched here, each predicted by a fit that "
                  "had seen no artifact of its checkpoint (leave one checkpoint out):", ""]
    header = ["quantity", "artifact", "measured", "estimated", "error"]
    rows = []
    for p in cal.points:
        if p["left_out_error"] is None:
            continue
        q, f = p["quantity"], p.get("features")
        rows.append([q, p["artifact"] + (f" {p['at']}" if p.get("at") else ""), readable(q, p["measured"], f),
                     readable(q, p["left_out"], f), f"{p['left_out_error'] * 100:+.1f}%"])
    lines += _table(header, rows)
    lines += ["", "Largest: " + ", ".join(f"{q} {_pct(cal.errors[q])}" for q in QUANTITIES) +
              " (the ± the plan shows). On another device the probe's ratio adds an error not measured here."]
    return "\n".join(lines)
