"""Keep freed CPU memory for reuse between inference calls (glibc).

glibc serves large blocks with mmap and hands them back to the OS on free, and trims the heap's top once
more than 128 KiB lies free there. An inference loop frees its activations after every call and allocates
the same sizes again on the next, so each call page-faults all of them in afresh, a large share of a small
model's time on a CPU (benchmarks/RESULTS.md). Taking every block from the heap and never trimming it lets
the next call reuse the pages, as jemalloc or tcmalloc would. The resident set then stays at the loop's peak
instead of falling between calls; :func:`release_freed_memory` still returns free pages on demand.
"""

from __future__ import annotations

import ctypes

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (macOS, musl): they manage memory their own way."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Process-wide: serve every block from the heap and never trim it. True where glibc applied it; False
    elsewhere. Calling it again is harmless."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS now (glibc's ``malloc_trim(0)``); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
