"""Peak memory of this process (stdlib only; used by the runtime's metrics, the build and bench)."""

from __future__ import annotations

import sys


def peak_rss_mb() -> int:
    """Peak resident set size in MB so far; 0 where the platform does not report it (Windows). On Linux the
    memory's own high-water mark (VmHWM): getrusage's ru_maxrss keeps the peak of the process this one was
    exec'd from (a build run from a large test process reported the test process's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    return _rusage_peak_mb("RUSAGE_SELF")


def peak_rss_with_children_mb() -> int:
    """The larger of this process's peak and the largest peak of a child it has waited for (a build: a large
    model's validation runs its reference in a process of its own). The two are not added: while that child
    runs, the build holds what the artifact's side left (~1 GB on the Qwen3.5-9B shape)."""
    return max(peak_rss_mb(), _rusage_peak_mb("RUSAGE_CHILDREN"))


def _rusage_peak_mb(who: str) -> int:
    """getrusage's ru_maxrss for ``who`` (RUSAGE_SELF or RUSAGE_CHILDREN) in MB; 0 without the module."""
    try:
        import resource
    except ImportError:
        return 0
    rss = resource.getrusage(getattr(resource, who)).ru_maxrss
    # ru_maxrss is in KiB on Linux, bytes on macOS
    return int(rss / 1024 / (1024 if sys.platform == "darwin" else 1))
