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


MADV_PAGEOUT = 21  # Linux 5.4+: reclaim the range now; nothing is lost (clean file pages are read back on use)


def page_out(folder: str) -> int:
    """Hand back the resident pages of every file under ``folder`` this process maps (onnxruntime maps an
    artifact's external weights and computes in place from the ones it does not prepack: after loading, the
    mapping holds every page the load read, ~580 MB of the Qwen3.5-9B shape's int4 artifact, mostly its
    embedding table, of which a token touches one row). Pages still in use come back from the page cache on
    their next read. Returns the bytes advised; 0 where this is not Linux or the kernel refuses."""
    libc = _libc()
    if libc is None:
        return 0
    prefix = folder.rstrip("/") + "/"
    advised = 0
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith(prefix):
            continue
        start, end = (int(a, 16) for a in parts[0].split("-"))
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT) == 0:
            advised += end - start
    return advised
