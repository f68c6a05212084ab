"""Peak memory of this process (stdlib only; used by the runtime's metrics, the build and bench)."""

from __future__ import annotations

import sys


def peak_rss_mb() -> int:
    """Peak resident set size in MB so far; 0 where the platform does not report it (Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, bytes on macOS
    return int(rss / 1024 / (1024 if sys.platform == "darwin" else 1))
