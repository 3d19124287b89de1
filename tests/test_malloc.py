"""keep_freed_memory: large freed blocks stay in glibc's heap instead of going back to the kernel."""

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import ctypes, resource, torch
from aeatrain.malloc import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = keep_freed_memory()
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)  # 64 MiB of float32, above glibc's largest mmap threshold
    mmapped = libc.mallinfo2().hblkhd  # bytes glibc holds in blocks it got with mmap
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, mmapped >= 2**26, sum(faults[-5:]))
"""

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"),
    reason="needs glibc 2.33 or newer (mallinfo2); the tuning is glibc-only",
)


def _probe(tuning: str) -> tuple[str, str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEATRAIN_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()  # fmt: skip
    return out[0], out[1], int(out[2])


def test_tuned_allocator_keeps_large_blocks_in_the_heap():
    tuned, mmapped, faults = _probe("1")
    assert (tuned, mmapped) == ("True", "False")
    # Once the heap has grown to fit the pattern (a few rounds: posix_memalign's padding
    # fragments it), a repeated 64 MiB block costs no fresh pages: the last 5 rounds would
    # fault ~82k pages (5 x 16k) if it went back to the kernel.
    assert faults < 1000


def test_opt_out_keeps_glibc_defaults():
    tuned, mmapped, faults = _probe("0")
    assert (tuned, mmapped) == ("False", "True")
    assert faults > 50_000  # every round maps and zeroes the block afresh
