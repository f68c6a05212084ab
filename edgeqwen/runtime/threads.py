"""How many threads this process may really use (affinity and cgroup quota, not the machine's count)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores() -> int:
    """Cores the scheduler lets this process run on, capped by a cgroup v2/v1 CPU quota if set."""
    if hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return q / p
    except (OSError, ValueError):
        pass
    return None


def resolve_threads(setting: int | str | None) -> int:
    """``"auto"``/None -> usable cores; an int is taken as given (must be >= 1)."""
    if setting in (None, "auto", 0):
        return usable_cores()
    n = int(setting)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    return n
