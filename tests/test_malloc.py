"""keep_freed_memory: a freed large block is reused instead of faulting in fresh pages."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import resource, torch
from aeatrain.malloc import keep_freed_memory
tuned = keep_freed_memory()
for _ in range(3):  # the first rounds bring the pages into the heap; count the last
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)  # 64 MiB of float32, far above glibc's mmap threshold
    del block
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(tuned, faults)
"""


def _faults(tuning: str) -> tuple[str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEATRAIN_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()  # fmt: skip
    return out[0], int(out[1])


def test_tuned_allocator_reuses_freed_blocks():
    tuned, faults = _faults("1")
    assert tuned == "True"
    assert faults < 1000  # 64 MiB of 4 KiB pages would be ~16k faults


def test_opt_out_keeps_glibc_defaults():
    tuned, faults = _faults("0")
    assert tuned == "False"
    assert faults > 10_000  # every round maps and zeroes the block afresh
