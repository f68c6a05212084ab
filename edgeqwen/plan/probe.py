"""A short probe of this machine: memory read bandwidth (what decode is bound by) and fp32 GEMM
throughput (prefill). The plan scales the calibration device's speeds by these ratios."""

from __future__ import annotations

import time

import numpy as np


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe(mbytes: int = 256, reps: int = 5) -> dict[str, float]:
    """{"bandwidth_gb_s", "gemm_gflops"}: best of ``reps`` (about a second in all)."""
    a = np.ones(mbytes * 2**20 // 4, dtype=np.float32)  # larger than any cache
    a.sum()  # touch every page first
    read = _best(lambda: a.sum(), reps)
    m = np.ones((1024, 1024), dtype=np.float32)
    m @ m
    gemm = _best(lambda: m @ m, reps)
    return {"bandwidth_gb_s": a.nbytes / read / 1e9, "gemm_gflops": 2 * 1024**3 / gemm / 1e9}
