#!/usr/bin/env python3
"""A/B of artifacts built from one checkpoint: prefill and decode speed, alternating, median of rounds.

Each round runs every artifact once (a fresh sequence: one prompt of --prompt random token ids as a prefill,
then --decode greedy decode steps); the first round warms up and is not counted. Alternating the artifacts
round by round spreads a noisy machine's drift over all of them, so the ratios mean more than the absolute
figures. What it was written for: the cost of a graph change (e.g. the Qwen3.5 graph's mRoPE positions and
vision-features input against the one-axis rotary before them).

    python benchmarks/ab_artifacts.py ART_A ART_B [--rounds 9] [--prompt 512] [--decode 128] [--threads 2] [-o DIR]

Prints the table; with -o also writes DIR/report.json (every round's figures) and DIR/report.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--rounds", type=int, default=9, help="rounds after the warm-up one is dropped: this minus 1")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", help="report folder (report.json, report.md)")
    args = ap.parse_args()

    from edgeqwen.bench.device import device_facts
    from edgeqwen.runtime.engine import Engine

    engines = {a: Engine(a, threads=args.threads) for a in args.artifacts}
    vocab = min(e.backend.vocab_size for e in engines.values())
    prompt = np.random.default_rng(0).integers(0, vocab, size=args.prompt).tolist()
    speed: dict[str, dict[str, list[float]]] = {a: {"prefill": [], "decode": []} for a in args.artifacts}
    for r in range(args.rounds):
        for a, engine in engines.items():
            state = engine.backend.new_state(args.prompt + args.decode + 1)
            try:
                t0 = time.perf_counter()
                token = int(state.append(prompt).argmax())
                t1 = time.perf_counter()
                for _ in range(args.decode):
                    token = int(state.append([token]).argmax())
                t2 = time.perf_counter()
            finally:
                state.close()
            if r:
                speed[a]["prefill"].append(args.prompt / (t1 - t0))
                speed[a]["decode"].append(args.decode / (t2 - t1))
    device = device_facts()
    head = (f"{device['cpu']}, {args.threads} threads, prompt {args.prompt}, {args.decode} decode steps, "
            f"median of {args.rounds - 1} alternating rounds")
    first = args.artifacts[0]
    p0, d0 = statistics.median(speed[first]["prefill"]), statistics.median(speed[first]["decode"])
    lines = [head, "", "| artifact | prefill tok/s | vs first | decode tok/s | vs first |", "|---|---:|---:|---:|---:|"]
    for a in args.artifacts:
        p, d = statistics.median(speed[a]["prefill"]), statistics.median(speed[a]["decode"])
        lines.append(f"| {a} | {p:.1f} | {p / p0:.2f}x | {d:.1f} | {d / d0:.2f}x |")
    print("\n".join(lines))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"device": device, "args": vars(args), "rounds": speed}, indent=2))
        (out / "report.md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
