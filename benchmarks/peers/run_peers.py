#!/usr/bin/env python3
"""One run, one machine, same prompt and threads: edgeqwen next to onnxruntime-genai's builder default
and llama.cpp (GGUF Q4_0, Q4_K_M and Q8_0 from llama.cpp's own converter), each with its bytes on disk.
Optionally the KL divergence of each against the fp32 transformers reference on the same tokens.

    python benchmarks/peers/run_peers.py --checkpoint CKPT --artifact ART [--artifact ART2 ...] \
        [--quality] [-o benchmarks/reports/peers-NAME]

A peer that cannot be installed or built is reported as skipped with the reason, never estimated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import genai_peer  # noqa: E402
import llamacpp_peer  # noqa: E402
from edgeqwen_peer import EdgeQwenPeer  # noqa: E402
from report_files import write_report  # noqa: E402

SCHEMA = "edgeqwen.bench.peers/1"


def make_peers(args, cache: Path, log) -> tuple[list, dict[str, str]]:
    peers, skipped = [EdgeQwenPeer(a, args.threads) for a in args.artifact], {}
    names = [p.name for p in peers]
    for p, a in zip(peers, args.artifact):  # two artifacts of one profile: tell them apart by folder
        if names.count(p.name) > 1:
            p.name = f"{p.name} ({Path(a).name})"
    if args.no_genai_builder:
        skipped["onnxruntime-genai default"] = "--no-genai-builder (its builder holds the whole model: ~90 GB for 7B)"
    else:
        try:
            folder = genai_peer.build_default(args.checkpoint, cache / "genai-default-int4")
            peers.append(genai_peer.GenaiReadme(folder, threads=args.threads))  # same threads as every engine
        except Exception as e:
            skipped["onnxruntime-genai default"] = _reason(e)
    why = llamacpp_peer.available()
    if why:
        skipped["llama.cpp"] = why
        return peers, skipped
    try:
        src = llamacpp_peer.converter_source(cache)
        for kind in args.llama_kinds:
            gguf = cache / f"model-{kind}.gguf"
            if not gguf.is_file():
                full = llamacpp_peer.convert(args.checkpoint, cache / f"model-{args.gguf_outtype}.gguf", src,
                                             args.gguf_outtype)
                llamacpp_peer.quantize(full, gguf, kind, args.threads)
            peers.append(llamacpp_peer.LlamaCpp(gguf, kind, args.threads, logits_all=args.quality))
        if not args.keep_full_gguf:  # the unquantised GGUF is as large as the checkpoint (or twice, in f32)
            (cache / f"model-{args.gguf_outtype}.gguf").unlink(missing_ok=True)
    except Exception as e:
        skipped["llama.cpp"] = _reason(e)
    return peers, skipped


def _reason(e: Exception) -> str:
    import subprocess

    if isinstance(e, subprocess.CalledProcessError):
        return f"a peer build step failed with exit status {e.returncode} (its stderr is above)"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def quality(peers, args, log) -> dict[str, dict]:
    from edgeqwen.corpus import held_out_text
    from edgeqwen.quality.reference import Reference
    from edgeqwen.quality.windows import compare_on_windows

    ref = Reference(args.checkpoint)
    text, name = (args.text.read_text(encoding="utf-8"), args.text.name) if args.text else held_out_text()
    ids = ref.tokenizer(text, add_special_tokens=False).input_ids[: args.quality_tokens + 1]
    out = compare_on_windows(ref, ids, {p.name: p.logits for p in peers}, args.window, log)
    for peer_name, s in out.items():
        s["text"] = name
        log(f"== quality {peer_name}: KL mean {s['kl_mean']:.5f}, ppl {s['perplexity']:.3f}")
    return out


def main() -> int:
    from edgeqwen.bench.device import device_facts
    from edgeqwen.bench.speed import filler_ids
    from edgeqwen.runtime.threads import usable_cores

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--artifact", type=Path, action="append", required=True, help="edgeqwen artifact(s)")
    p.add_argument("--threads", type=int, default=usable_cores())
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quality", action="store_true")
    p.add_argument("--text", type=Path)
    p.add_argument("--quality-tokens", type=int, default=1024)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--llama-kinds", nargs="+", default=["Q4_0", "Q4_K_M", "Q8_0"],
                   help="llama.cpp quantisation types (default Q4_0 Q4_K_M Q8_0)")
    p.add_argument("--gguf-outtype", default="f32", choices=("f32", "bf16", "f16"),
                   help="the converter's output before quantising (bf16 halves the disk a 7B needs: 15 vs 30 GB)")
    p.add_argument("--keep-full-gguf", action="store_true", help="keep the unquantised GGUF in the cache")
    p.add_argument("--no-genai-builder", action="store_true",
                   help="skip onnxruntime-genai's own builder (it needs about 12 bytes of RAM per parameter)")
    p.add_argument("-o", "--output", type=Path, default=Path("benchmarks/reports/peers"))
    args = p.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    cache = HERE.parent / ".cache" / args.checkpoint.resolve().name
    peers, skipped = make_peers(args, cache, log)
    for name, why in skipped.items():
        log(f"== skipped {name}: {why}")
    ids = filler_ids(peers[0].engine, args.prompt_tokens)
    for peer in peers:
        peer.run(ids, 8)  # warm-up
    samples = {peer.name: {"prefill": [], "decode": []} for peer in peers}
    for rep in range(args.reps):
        for peer in peers:
            pre, dec, _ = peer.run(ids, args.new_tokens)
            samples[peer.name]["prefill"].append(pre)
            samples[peer.name]["decode"].append(dec)
            log(f"rep {rep + 1}/{args.reps} {peer.name:28s} prefill {pre:8.1f} tok/s  decode {dec:7.1f} tok/s")
    med = {k: {m: statistics.median(v) for m, v in s.items()} for k, s in samples.items()}
    report = {"schema": SCHEMA, "checkpoint": str(args.checkpoint), "device": device_facts(),
              "threads": {peer.name: peer.threads for peer in peers},
              "size_bytes": {peer.name: peer.size_bytes for peer in peers}, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "reps": args.reps, "median_tokens_per_s": med, "samples": samples,
              "skipped": skipped}
    if args.quality:
        report["quality"] = quality(peers, args, log)
    print(write_report(args.output, report, markdown, plot, "peers.png"))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Peers on {r['device']['cpu']}", "",
             f"Prompt {r['prompt_tokens']} tokens, {r['new_tokens']} new tokens, greedy; median of {r['reps']} "
             "alternating runs.", "",
             "| engine | threads | size MB | prefill tok/s | decode tok/s |", "|---|---|---:|---:|---:|"]

    def size(name: str) -> str:  # reports from before sizes were recorded have none
        b = r.get("size_bytes", {}).get(name)
        return "?" if b is None else f"{b / 1e6:.1f}"

    for name, m in r["median_tokens_per_s"].items():
        lines.append(f"| {name} | {r['threads'][name]} | {size(name)} | {m['prefill']:.1f} | {m['decode']:.1f} |")
    for name, why in r["skipped"].items():
        lines.append(f"| {name} | - | | skipped: {why} | |")
    q = r.get("quality")
    if q:
        first = next(iter(q.values()))
        lines += ["", f"Against the fp32 transformers reference on {first['text']} ({first['tokens']} tokens):", "",
                  "| engine | size MB | perplexity | KL mean | KL p90 | KL p99 | KL max | top-1 |",
                  "|---|---:|---|---|---|---|---|---|",
                  f"| transformers fp32 | | {first['reference_perplexity']:.3f} | 0 | 0 | 0 | 0 | 100% |"]
        for name, s in q.items():
            lines.append(f"| {name} | {size(name)} | {s['perplexity']:.3f} | {s['kl_mean']:.5f} | {s['kl_p90']:.5f} | "
                         f"{s['kl_p99']:.5f} | {s['kl_max']:.4f} | {s['top1_agreement']:.1%} |")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["median_tokens_per_s"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 1.8))
    for ax, key in zip(axes, ("prefill", "decode")):
        vals = [r["median_tokens_per_s"][n][key] for n in names]
        ax.barh(names, vals, color=["tab:blue" if n.startswith("edgeqwen") else "tab:gray" for n in names])
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.0f}", va="center", fontsize=8)
        ax.set(title=f"{key} tokens/s", xlim=(0, max(vals) * 1.2))
        ax.invert_yaxis()
    fig.suptitle(f"{r['device']['cpu']}, prompt {r['prompt_tokens']}, {r['new_tokens']} new tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
