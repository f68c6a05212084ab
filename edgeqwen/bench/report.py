"""report.json (versioned schema), report.md and PNG plots for one artifact, and comparisons."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from edgeqwen.errors import EdgeQwenError

SCHEMA = "edgeqwen.bench.report/1"
REQUIRED = ("schema", "artifact", "device", "size_bytes", "load_s", "speed", "peak_rss_mb")


def validate_report(report: dict[str, Any], source: str = "report") -> dict[str, Any]:
    if report.get("schema") != SCHEMA:
        raise ValueError(f"{source}: schema {report.get('schema')!r} is not {SCHEMA}")
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}")
    return report


def load_report(path: Path) -> dict[str, Any]:
    return validate_report(json.loads(Path(path).read_text()), str(path))


def _fmt(s: dict[str, Any], digits: int = 1) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    a, d, sp = r["artifact"], r["device"], r["speed"]
    lines = [
        f"# {a['name']} ({a['profile']}) on {d['cpu']}",
        "",
        f"{d['usable_cores']} usable cores ({r['threads']} threads used), {d['ram_gb']} GB RAM, {d['os']}; "
        f"ISA: {', '.join(d['isa']) or 'n/a'}; onnxruntime {d['packages'].get('onnxruntime')}, "
        f"onnxruntime-genai {d['packages'].get('onnxruntime-genai')}.",
        "",
        f"- size on disk: {r['size_bytes'] / 2**20:.1f} MB",
        f"- load time: {_fmt(r['load_s'], 2)} s",
        f"- peak RSS: {r['peak_rss_mb']} MB",
        "",
        "| prompt tokens | prefill tok/s | time to first token (ms) |",
        "|---|---|---|",
    ]
    for n, s in sp["prefill_tokens_per_s"].items():
        t = sp["ttft_s"][n]
        lines.append(f"| {n} | {_fmt(s)} | {t['mean'] * 1000:.0f} ± {t['std'] * 1000:.0f} |")
    lines += ["", f"| KV depth | decode tok/s ({sp['decode_tokens']} tokens) |", "|---|---|"]
    for dpt, s in sp["decode_tokens_per_s"].items():
        lines.append(f"| {dpt} | {_fmt(s)} |")
    if sp.get("skipped"):
        lines += ["", "Not measured:", ""] + [f"- {s}" for s in sp["skipped"]]
    q = r.get("quality")
    if q:
        lines += ["", f"Quality on {q['text']} ({q['tokens']} tokens, windows of {q['window']}) against the fp32 "
                      "transformers reference:", "",
                  "| perplexity | reference perplexity | KL mean | KL p90 | KL p99 | KL max | top-1 agreement |",
                  "|---|---|---|---|---|---|---|",
                  f"| {q['perplexity']:.3f} | {q['reference_perplexity']:.3f} | {q['kl_mean']:.5f} | {q['kl_p90']:.5f} "
                  f"| {q['kl_p99']:.5f} | {q['kl_max']:.4f} | {q['top1_agreement']:.2%} |"]
    sample = r.get("sample")
    if sample:
        used = sample.get("sampling") or {}
        how = "greedy" if not used.get("temperature") else ", ".join(
            f"{k} {used[k]:g}" for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                         "presence_penalty") if k in used)
        lines += ["", f"A chat answer with the model's own sampling defaults ({how}, seed {used.get('seed')}, "
                      f"{sample['tokens']} tokens, {sample['finish_reason']}):", "",
                  f"> {sample['prompt']}", ""]
        if sample.get("reasoning"):
            lines += ["```text", f"[thinking] {sample['reasoning']}", "```"]
        lines += ["```text", sample["text"], "```"]
    lines += ["", f"Mean ± standard deviation over {sp['reps']} runs."]
    return "\n".join(lines) + "\n"


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    """Two panels: prefill tok/s against prompt length, decode tok/s against KV depth; one line per report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in reports:
        label = r.get("label") or f"{r['artifact']['name']} ({r['artifact']['profile']})"
        for ax, key in ((ax1, "prefill_tokens_per_s"), (ax2, "decode_tokens_per_s")):
            pts = sorted((int(k), v["mean"], v["std"]) for k, v in r["speed"][key].items())
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax1.set(title="Prefill", xlabel="prompt length (tokens)", ylabel="tokens / s", xscale="log")
    lengths = sorted({int(k) for r in reports for k in r["speed"]["prefill_tokens_per_s"]})
    ax1.set_xticks(lengths, [str(n) for n in lengths])
    ax1.minorticks_off()
    ax2.set(title=f"Decode ({reports[0]['speed']['decode_tokens']} tokens)", xlabel="tokens already in the KV cache",
            ylabel="tokens / s")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(reports[0]["device"]["cpu"] if len({r["device"]["cpu"] for r in reports}) == 1 else "")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_if_possible(reports: list[dict[str, Any]], path: Path, say) -> bool:
    """Plot where matplotlib is installed (the [bench] extra); otherwise say how to get the plot."""
    if importlib.util.find_spec("matplotlib") is None:
        say(f"no plot: matplotlib is not installed (pip install 'edgeqwen[bench]' for {path.name})")
        return False
    plot(reports, path)
    return True


def write(report: dict[str, Any], out: Path, say=lambda s: None) -> list[Path]:
    """report.json, report.md and, where matplotlib is installed, speed.png (else ``say`` explains)."""
    out.mkdir(parents=True, exist_ok=True)
    validate_report(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    files = [out / "report.json", out / "report.md"]
    if _plot_if_possible([report], out / "speed.png", say):
        files.append(out / "speed.png")
    return files


def report_path(path: Path) -> Path:
    """A report.json, or a folder holding one (what ``edgeqwen bench -o`` wrote)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "report.json").is_file():
            raise EdgeQwenError(f"{path} is a folder without a report.json; give report.json files or the "
                                "folders `edgeqwen bench -o` wrote")
        return path / "report.json"
    if not path.is_file():
        raise EdgeQwenError(f"{path} does not exist; give report.json files or the folders `edgeqwen bench -o` wrote")
    return path


def compare(paths: list[Path], out: Path, say=lambda s: None) -> str:
    reports = []
    for p in map(report_path, paths):
        try:
            reports.append(load_report(p))
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise EdgeQwenError(f"{p} is not an edgeqwen bench report ({e})") from None
    out.mkdir(parents=True, exist_ok=True)
    lengths = sorted({int(k) for r in reports for k in r["speed"]["prefill_tokens_per_s"]})
    depths = sorted({int(k) for r in reports for k in r["speed"]["decode_tokens_per_s"]})
    head = ["artifact", "device", "size MB", "peak RSS MB"] + [f"prefill@{n}" for n in lengths] + \
        [f"decode@{d}" for d in depths] + ["perplexity", "KL mean"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        sp, q = r["speed"], r.get("quality") or {}
        cells = [r.get("label") or f"{r['artifact']['name']} ({r['artifact']['profile']})", r["device"]["cpu"][:32],
                 f"{r['size_bytes'] / 2**20:.1f}", str(r["peak_rss_mb"])]
        cells += [f"{sp['prefill_tokens_per_s'][str(n)]['mean']:.1f}" if str(n) in sp["prefill_tokens_per_s"] else "-"
                  for n in lengths]
        cells += [f"{sp['decode_tokens_per_s'][str(d)]['mean']:.1f}" if str(d) in sp["decode_tokens_per_s"] else "-"
                  for d in depths]
        cells += [f"{q['perplexity']:.3f}" if q else "-", f"{q['kl_mean']:.5f}" if q else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    table = "\n".join(rows) + "\n"
    (out / "compare.md").write_text(table)
    _plot_if_possible(reports, out / "compare.png", say)
    return table
