"""What ``aeatrain.malloc.keep_freed_memory`` buys and costs on CPU (docs/benchmarks.md).

Runs the real trainer (``aeatrain/train.py``, one process, one thread) with
``AEATRAIN_MALLOC_TUNING=1`` (the default: glibc keeps freed blocks) and ``=0`` (glibc's
defaults: blocks above the mmap threshold go back to the kernel), alternating, and prints per
setting the median step time (wall and CPU, from the trainer's TensorBoard scalars, leaving
out ``--warmup`` steps), the process's minor page faults per step and its peak resident
memory after the warm-up steps (the trainer's ``perf/peak_memory_mib``) and at the end
(``ru_maxrss`` from ``wait4``): whether the kept memory settles. Ratios are tuned / defaults.

    python benchmarks/bench_malloc.py [--model aeanet] [--steps 10] [--warmup 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import (
    CROP,
    GLOBAL_BATCH,
    MODELS,
    ROOT,
    command,
    device_name,
    logged_scalars,
    step_seconds,
)

from tests.datasets import make_dataset

SETTINGS = {"tuned": "1", "defaults": "0"}


def measure(model: str, tuning: str, data: Path, run_dir: Path, args) -> dict[str, float]:
    """One training run; its step times, page faults per step and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               AEATRAIN_MALLOC_TUNING=tuning)  # fmt: skip
    log = run_dir.with_suffix(".log")
    argv = command(model, 1, data, run_dir, args.steps)
    with open(log, "w") as sink:
        output = [(os.POSIX_SPAWN_DUP2, sink.fileno(), 1), (os.POSIX_SPAWN_DUP2, sink.fileno(), 2)]
        pid = os.posix_spawn(argv[0], argv, env, file_actions=output)
        _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{model} with tuning={tuning} failed:\n{log.read_text()[-3000:]}")
    events = logged_scalars(run_dir)
    wall, cpu = step_seconds(events, args.warmup)
    return {
        "wall": wall,
        "cpu": cpu,
        "faults_per_step": usage.ru_minflt / args.steps,
        "warm_peak_gib": peak_rss_after(events, args.warmup) / 2**10,
        "peak_gib": usage.ru_maxrss / 2**20,  # kilobytes on Linux
    }


def peak_rss_after(events, step: int) -> float:
    """The peak resident MiB the trainer logged at ``step`` (``perf/peak_memory_mib`` on CPU)."""
    return next(e.value for e in events.Scalars("perf/peak_memory_mib") if e.step >= step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="aeanet")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = make_dataset(workdir / "DATA", pairs=3, width=400, height=300)
        for repeat in range(args.repeats):
            for name, tuning in SETTINGS.items():
                figures = measure(args.model, tuning, data, workdir / f"{name}-{repeat}", args)
                results[name].append(figures)
                print(f"repeat {repeat}: {name}: {figures}", file=sys.stderr, flush=True)
    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    print(f"device: {device_name(False)}; {args.model}, crops {CROP}x{CROP}, global batch "
          f"{GLOBAL_BATCH}, 1 process, 1 thread, {args.steps} steps ({args.warmup} warm-up), "
          f"median of {args.repeats} repeats")  # fmt: skip
    print(
        f"| allocator | s/step (wall) | CPU s/step | page faults/step "
        f"| peak RSS after step {args.warmup} (GiB) | peak RSS at the end (GiB) |"
    )
    print("|---|---|---|---|---|---|")
    for name, m in medians.items():
        print(f"| {name} | {m['wall']:.2f} | {m['cpu']:.2f} | {m['faults_per_step']:.0f} "
              f"| {m['warm_peak_gib']:.2f} | {m['peak_gib']:.2f} |")  # fmt: skip
    tuned, defaults = medians["tuned"], medians["defaults"]
    print(f"tuned / defaults: wall {tuned['wall'] / defaults['wall']:.2f}x, CPU "
          f"{tuned['cpu'] / defaults['cpu']:.2f}x, peak RSS "
          f"{tuned['peak_gib'] / defaults['peak_gib']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
