"""Training-step throughput of the real trainer (figures in docs/benchmarks.md, "Training step").

Runs ``aeatrain/train.py`` itself (loader, forward/backward, clipping, Adam, the per-step
all-reduce of the skip/preemption flags, logging; on a GPU fused Adam and no host read
between log steps) for unet, gvtnet and aeanet with their
shipped configs (base 32 channels, 64 references) at 256x256 crops, global batch 8, on
1 process (``python aeatrain/train.py``) and 2 processes (``accelerate launch --cpu
--num_processes 2``, DDP over gloo, batch-aware attention over both). One thread per
process (``OMP_NUM_THREADS=1``): on a shared machine more threads than free cores make
OpenMP spin and the figures meaningless. On a machine with a GPU, ``--gpu`` runs one
process per model on it instead (the card is printed).

Step time is the median of the per-step ``perf/step_seconds`` the trainer logs to
TensorBoard, leaving out ``--warmup`` steps; samples/s = global batch / step time. The CPU
seconds per step (``perf/cpu_seconds_per_step``, the main process's CPU time) are what the
step costs whatever else the machine runs: on a shared machine compare those. The runs of
the three models alternate ``--repeats`` times so that all see the same machine load; the
table gives medians over repeats and the ratios to U-Net.

    python benchmarks/bench_train.py [--steps 8] [--warmup 3] [--repeats 2] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from tests.datasets import make_dataset  # noqa: E402

MODELS = ("unet", "gvtnet", "aeanet")
CROP, GLOBAL_BATCH = 256, 8


def command(model: str, processes: int, data: Path, run_dir: Path, steps: int) -> list[str]:
    overrides = [
        "--config", str(ROOT / "configs" / f"{model}.yaml"),
        "--data.root", str(data), "--train.run_dir", str(run_dir),
        "--train.steps", str(steps), "--data.crop_size", str(CROP),
        "--data.global_batch_size", str(GLOBAL_BATCH), "--data.num_workers", "0",
        "--train.checkpoint_every", str(10 * steps), "--logging.log_every", "1",
        "--logging.eval_every", str(10 * steps), "--logging.eval_max_pairs", "1",
        "--logging.progress_bar", "false",
    ]  # fmt: skip
    script = str(ROOT / "aeatrain" / "train.py")
    if processes == 1:
        return [sys.executable, script, *overrides]
    accelerate = str(Path(sys.executable).parent / "accelerate")
    launch = ["--cpu", "--num_processes", str(processes), "--main_process_port", str(free_port())]
    return [accelerate, "launch", *launch, script, *overrides]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def logged_scalars(run_dir: Path) -> EventAccumulator:
    """The scalars a run logged to TensorBoard, all of them."""
    events = EventAccumulator(str(run_dir / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def step_seconds(events: EventAccumulator, warmup: int) -> tuple[float, float]:
    """Median logged (wall, CPU) seconds per step, leaving out the first ``warmup`` steps."""

    def median(tag: str) -> float:
        return statistics.median(e.value for e in events.Scalars(tag) if e.step > warmup)

    return median("perf/step_seconds"), median("perf/cpu_seconds_per_step")


def measure(model, processes, data, args, workdir: Path, tag: str) -> tuple[float, float]:
    run_dir = workdir / f"{model}-{processes}-{tag}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if not args.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(
        command(model, processes, data, run_dir, args.steps), env=env, capture_output=True,
        text=True, cwd=ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{model} x{processes} failed:\n{result.stderr[-3000:]}")
    return step_seconds(logged_scalars(run_dir), args.warmup)


def table(results: dict[tuple[str, int], list[tuple[float, float]]], process_counts) -> str:
    """Medians over repeats; ratios to U-Net on the same number of processes."""
    lines = [
        "| model | processes | s/step (wall) | samples/s (wall) | CPU s/step per process "
        "| wall / U-Net | CPU / U-Net |",
        "|---|---|---|---|---|---|---|",
    ]
    for processes in process_counts:
        unet_wall, unet_cpu = _medians(results[("unet", processes)])
        for model in MODELS:
            wall, cpu = _medians(results[(model, processes)])
            lines.append(
                f"| {model} | {processes} | {wall:.2f} | {GLOBAL_BATCH / wall:.2f} | {cpu:.2f} "
                f"| {wall / unet_wall:.3f} | {cpu / unet_cpu:.3f} |"
            )
    return "\n".join(lines)


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def device_name(gpu: bool) -> str:
    if gpu:
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="one process on the GPU")
    args = parser.parse_args()
    process_counts = (1,) if args.gpu else (1, 2)
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = make_dataset(workdir / "DATA", pairs=3, width=400, height=300)  # 288x300 regions
        for repeat in range(args.repeats):
            for processes in process_counts:
                for model in MODELS:
                    wall, cpu = measure(model, processes, data, args, workdir, str(repeat))
                    results.setdefault((model, processes), []).append((wall, cpu))
                    print(f"repeat {repeat}: {model} x{processes}: {wall:.3f} s/step wall, "
                          f"{cpu:.3f} CPU s/step", file=sys.stderr, flush=True)  # fmt: skip
    print(f"device: {device_name(args.gpu)}; crops {CROP}x{CROP}, global batch {GLOBAL_BATCH}, "
          f"{args.steps} steps ({args.warmup} warm-up), median of {args.repeats} repeats, "
          f"1 thread per process")  # fmt: skip
    print(table(results, process_counts))


if __name__ == "__main__":
    main()
