"""glibc's allocator, asked to give freed memory back to the system between the large phases of a build.

GPTQ layer by layer allocates and frees the same large buffers for every layer (the layer's fp32 weights, its
Hessians, the solver's [K, K] factors: hundreds of MB each at 8B); validation runs the artifact's session, its
fp32-compute twin, then the reference, each freed before the next loads. glibc keeps freed heap memory for
reuse, fragmented, so each phase can stack on what the previous one left resident; ``trim`` hands the free
pages back (malloc_trim). A fixed mmap threshold would return every large block at once but costs a page fault
per fresh allocation (numpy temporaries of 8 MB: 2.3x slower, measured), so it is not used. Elsewhere than glibc
(macOS, musl) ``trim`` does nothing. Stdlib only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import cache


@cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim() -> None:
    """Return the free memory of the heap and its arenas to the system."""
    libc = _libc()
    if libc:
        libc.malloc_trim(ctypes.c_size_t(0))


def release() -> None:
    """What was just dropped, back to the system: collect cycles first (an object in a cycle holds its
    buffers until the collector runs), then trim."""
    gc.collect()
    trim()
