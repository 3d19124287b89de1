"""Keep freed tensor memory in the process on CPU (glibc's malloc), instead of returning it.

glibc hands every allocation above its mmap threshold (a few MB at most, adjusted upwards
as big blocks are freed) to the kernel with ``mmap`` and gives it back with ``munmap`` when
freed. A CPU training step or a whole-image prediction allocates and frees activations of
tens to hundreds of MB many times over, so every step pays for fresh zeroed pages from the
kernel: measured on this project's 2-core machine, 40-70% of the CPU time of an AEANet step
(256x256 crops, batch 8: 14.3 s -> 8.5 s) and of a 1280x944 whole-image prediction
(3.7 s -> 1.1 s) went to page faults. Raising the mmap and trim thresholds keeps the freed
blocks in the heap for reuse. The cost: the process's resident memory stays at its peak,
and above it, since torch's 64-byte-aligned requests fragment the kept heap until freed
neighbours merge: an AEANet training step at 256x256, batch 8 peaked at 3.8 GiB instead of
2.4 GiB (``benchmarks/bench_malloc.py``, docs/benchmarks.md).

``AEATRAIN_MALLOC_TUNING=0`` leaves glibc's defaults alone. Nothing happens off glibc
(macOS, musl) or where the library cannot be loaded; GPU memory is unaffected either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters of glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_THRESHOLD_BYTES = 2**31 - 1  # the largest value mallopt takes (an int)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when it took effect."""
    if os.environ.get("AEATRAIN_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES) == 1 and ok
    if not ok:
        log.debug("mallopt refused the thresholds; keeping the allocator's defaults")
    return ok
