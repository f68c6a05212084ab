"""glibc's allocator, asked to give freed memory back to the system (GPTQ's per-layer buffers, validation's
sessions and references).

GPTQ layer by layer allocates and frees the same large buffers for every layer (the layer's fp32 weights,
its Hessians, the solver's [K, K] factors: hundreds of MB each at 8B). glibc serves a large allocation from
mmap only while it is above a threshold that it raises to the size of every mmapped block freed, so after the
first layer these buffers come from the heap, where freed blocks stay resident and fragment: the measured peak
of the Qwen3-8B shape grew from 4.03 GiB at layer 1's solve to 4.89 at layer 2's. Validation has the same
shape: the artifact's session, its fp32-compute twin, then the reference, each freed before the next loads,
and each stacking on what the previous one left resident (the Qwen3.5-0.8B shape's int4 validation went 2.9 ->
5.5 -> 6.7 GB). A fixed threshold keeps every large block in its own mapping, returned when freed; ``trim`` hands
back what the heap holds free. Elsewhere than glibc (macOS, musl) both do nothing. Stdlib only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
LARGE = 1 << 20  # blocks of 1 MiB and more get their own mapping


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_large_blocks(threshold: int = LARGE) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; whether it took."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold)))


def trim() -> None:
    """Return the free memory at the heap's top (and in its arenas) to the system."""
    libc = _libc()
    if libc:
        libc.malloc_trim(ctypes.c_size_t(0))
