#!/usr/bin/env python3
"""Decode and prefill speed of the edgeqwen runtime next to onnxruntime-genai used as its README shows.

Same machine, same run, same checkpoint, same prompt (128 tokens) and 128 new tokens, greedy:

  edgeqwen          our artifact through edgeqwen.runtime (threads from the usable cores)
  edgeqwen-1thread  the same, forced to one thread (separates the thread effect from the graph's)
  genai-default     onnxruntime-genai's own model builder (-p int4 -e cpu) and its README loop:
                    og.Model(path), GeneratorParams, append_tokens, generate_next_token

Runs alternate (A B C A B C ...) so drift hits all alike; medians and ratios are reported.

    python benchmarks/runtime_vs_genai.py --artifact ART --checkpoint CKPT [-o benchmarks/reports/NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from edgeqwen_peer import EdgeQwenPeer  # noqa: E402
from genai_peer import GenaiReadme, build_default  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True, help="edgeqwen artifact (cpu-int4)")
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint it was built from")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("-o", "--output", type=Path, default=Path("benchmarks/reports/runtime_vs_genai"))
    args = p.parse_args()

    from edgeqwen.bench.device import device_facts
    from edgeqwen.bench.speed import filler_ids

    args.output.mkdir(parents=True, exist_ok=True)
    cache = Path(__file__).resolve().parent / ".cache" / args.checkpoint.resolve().name  # git-ignored
    genai_dir = build_default(args.checkpoint, cache / "genai-default-int4")
    runners = {"edgeqwen": EdgeQwenPeer(args.artifact, None), "edgeqwen-1thread": EdgeQwenPeer(args.artifact, 1),
               "genai-default": GenaiReadme(genai_dir)}
    ids = filler_ids(runners["edgeqwen"].engine, args.prompt_tokens)  # the prompt edgeqwen bench uses too
    samples: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in runners}
    for name, r in runners.items():  # warm-up: first-run allocations and kernel selection
        r.run(ids, 8)
    for rep in range(args.reps):
        for name, r in runners.items():
            pre, dec, out = r.run(ids, args.new_tokens)
            samples[name]["prefill"].append(pre)
            samples[name]["decode"].append(dec)
            print(f"rep {rep + 1}/{args.reps} {name:17s} prefill {pre:7.1f} tok/s  decode {dec:6.1f} tok/s "
                  f"({len(out)} tokens)", file=sys.stderr, flush=True)

    med = {k: {m: statistics.median(v) for m, v in s.items()} for k, s in samples.items()}
    spread = {k: {m: [min(v), max(v)] for m, v in s.items()} for k, s in samples.items()}
    base = med["genai-default"]
    report = {
        "schema": "edgeqwen.bench.runtime_vs_genai/1",
        "artifact": str(args.artifact), "checkpoint": str(args.checkpoint),
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "reps": args.reps,
        "threads": {"edgeqwen": runners["edgeqwen"].engine.threads, "edgeqwen-1thread": 1,
                    "genai-default": "genai's own default"},
        "device": device_facts(),  # edgeqwen.bench.device
        "median_tokens_per_s": med, "min_max_tokens_per_s": spread,
        "ratio_vs_genai_default": {k: {m: v[m] / base[m] for m in v} for k, v in med.items()},
        "samples": samples,
    }
    (args.output / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# edgeqwen runtime vs onnxruntime-genai (README usage)", "",
             f"{report['device']['cpu']}, {report['device']['usable_cores']} usable cores; prompt "
             f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, {args.reps} alternating reps "
             f"(median, [min, max]).", "",
             "| engine | threads | prefill tok/s | decode tok/s | prefill vs genai | decode vs genai |",
             "|---|---|---|---|---|---|"]
    for k in runners:
        r = report["ratio_vs_genai_default"][k]
        lines.append(f"| {k} | {report['threads'][k]} | {med[k]['prefill']:.1f} {_mm(spread[k]['prefill'])} | "
                     f"{med[k]['decode']:.1f} {_mm(spread[k]['decode'])} | {r['prefill']:.2f}x | {r['decode']:.2f}x |")
    (args.output / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _mm(v: list[float]) -> str:
    return f"[{v[0]:.0f}, {v[1]:.0f}]"


if __name__ == "__main__":
    sys.exit(main())
