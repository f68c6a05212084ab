#!/usr/bin/env python3
"""What batching can buy on this machine: the time of one decode run of an artifact's graph through the
batched backend for 1, 2, 4 and 8 rows (KV depth ~100), and the tokens per second that gives.

The server's aggregate throughput at N concurrent clients cannot exceed N rows' tokens per run / run
time; this measures that ceiling without HTTP, sampling or prompts in the way.

    python benchmarks/batched_step.py ARTIFACT [--runs 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeqwen.runtime.engine import Engine  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default="1,2,4,8")
    args = p.parse_args()
    backend = Engine(args.artifact, threads=args.threads, backend="batched", verify="size").backend
    rows = [int(r) for r in args.rows.split(",")]
    backend._regrow(max(rows), 256)  # one buffer for every batch size: no growth inside the timing
    print("| rows | ms per run (median) | tokens/s | x one row |\n|---:|---:|---:|---:|")
    base = None
    for n in rows:
        tokens = np.full((n, 1), 5)
        times = []
        for k in range(args.runs):
            t = time.perf_counter()
            backend._step(0, n, tokens, [100 + k] * n)  # row b writes position 99 + k, attends to 100 + k
            times.append(time.perf_counter() - t)
        ms = statistics.median(times[2:]) * 1000  # the first runs allocate
        rate = n / ms * 1000
        base = base or rate
        print(f"| {n} | {ms:.1f} | {rate:.1f} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
