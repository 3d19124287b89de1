"""Start-up at scale: bytes read and time to the first batch as the dataset grows, local
and over HTTP (figures in docs/benchmarks.md, "Start-up and remote shards").

Three measurements, each on datasets written by ``tests/datasets.make_dataset``:

1. ``train``: bytes a 1-step training run reads (``/proc/self/io`` rchar of the trainer's
   process: ``aeatrain/train.py --config configs/debug.yaml --train.steps 1``) on 6 and
   on 60 pairs of 640 x 472 (the issue's measurement). Imports, the model and the run
   folder cost the same in both runs, so the difference over the difference in dataset
   bytes is what start-up reads per byte of dataset (acceptance: at most 10 %).
2. ``first``: time to the first batch of ``train_loader`` (manifest, indexes, one pool
   decoded) and the bytes read for it, for 22, 220 and 2,200 pairs of small 64 x 48
   images, on ranks 0 and 1 of 4, from the local folder and over HTTP from a server on
   127.0.0.1 with range requests (tests/http_range.py), which counts what it sends
   (acceptance: 2,200 pairs at most 1.5x the time of 22).
3. ``crops``: crops/s of 128^2 from 22 pairs of 640 x 472 with the decoded-region cache
   off (every pool reads its regions again): local, HTTP range reads, HTTP staged once
   into a cache folder.

    python benchmarks/bench_startup.py [--only train,first,crops] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aeatrain.data import loader, shardio  # noqa: E402
from tests.datasets import make_dataset  # noqa: E402
from tests.http_range import RangeServer  # noqa: E402

_TRAINER = """
import sys
from aeatrain.train import main
try:
    main(sys.argv[1:])
finally:
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            print("RCHAR", line.split()[1], file=sys.stderr)
"""


def rchar() -> int:
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("rchar:"))


def dataset_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


def trainer_rchar(root: Path, run_dir: Path) -> int:
    """rchar of a 1-step training run of the debug config on ``root``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": "/nonexistent-hf-home"}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", _TRAINER, "--config", str(ROOT / "configs/debug.yaml"),
               "--data.root", str(root), "--train.run_dir", str(run_dir),
               "--train.steps", "1", "--logging.progress_bar", "false"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"training run failed:\n{done.stderr[-3000:]}")
    return int(done.stderr.rsplit("RCHAR ", 1)[1].split()[0])


def bench_train(work: Path) -> None:
    print("## 1-step training run: bytes read (rchar) against dataset size, 640 x 472 pairs")
    rows = {}
    for pairs in (6, 60):
        root = make_dataset(work / f"train{pairs}", pairs=pairs, width=640, height=472)
        rows[pairs] = (dataset_bytes(root), trainer_rchar(root, work / f"run{pairs}"))
        print(f"{pairs:3d} pairs: dataset {rows[pairs][0] / 2**20:7.2f} MiB, "
              f"run read {rows[pairs][1] / 2**20:7.2f} MiB")  # fmt: skip
    grown = rows[60][0] - rows[6][0]
    read = rows[60][1] - rows[6][1]
    print(f"growth: dataset +{grown / 2**20:.2f} MiB, read +{read / 2**20:.3f} MiB = "
          f"{100 * read / grown:.2f} % of the dataset's growth (acceptance: <= 10 %)\n")  # fmt: skip


_COLD_RANK = """
import sys
from aeatrain.data.loader import train_loader
stream = train_loader(sys.argv[1], crop_size=32, batch_size=8, seed=0, rank=1, world_size=4)
next(stream)
print("FIRST", flush=True)
stream.close()
"""


def cold_first_batch(source: str) -> float:
    """Seconds from starting a fresh process (a rank: interpreter, imports) to its first
    batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-c", _COLD_RANK, source], env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        line = process.stdout.readline()
        seconds = time.perf_counter() - start
        process.wait(timeout=120)
    if not line.startswith("FIRST"):
        raise SystemExit(f"{source}: the rank did not reach its first batch")
    return seconds


def first_batch(source: str, rank: int, cache_dir: str | None = None) -> tuple[float, int]:
    """(seconds, bytes read by this process) to the first batch of a fresh loader."""
    shardio._staged.clear()
    before, start = rchar(), time.perf_counter()
    stream = loader.train_loader(
        source, crop_size=32, batch_size=8, seed=0, rank=rank, world_size=4, cache_dir=cache_dir
    )
    next(stream)
    seconds = time.perf_counter() - start
    read = rchar() - before
    stream.close()
    return seconds, read


def bench_first(work: Path, repeats: int) -> None:
    print("## Time to the first batch and bytes read, 64 x 48 pairs, crops 32^2, batch 8")
    print("| pairs | dataset MiB | source | rank | loader to first batch ms | bytes read "
          "(served) | fresh process to first batch s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    times, cold = {}, {}
    for pairs in (22, 220, 2200):
        start = time.perf_counter()
        root = make_dataset(work / f"first{pairs}", pairs=pairs, width=64, height=48)
        built = time.perf_counter() - start
        size = dataset_bytes(root) / 2**20
        with RangeServer(work) as server:
            for label in ("local", "http"):
                for rank in (0, 1):
                    source = str(root) if label == "local" else f"{server.url}/{root.name}"
                    runs = []
                    for _ in range(repeats):
                        server.reset()
                        seconds, read = first_batch(source, rank)
                        runs.append((seconds, server.bytes_sent if label == "http" else read))
                    ms = 1000 * statistics.median(r[0] for r in runs)
                    times[(pairs, label, rank)] = ms
                    fresh = ""
                    if rank == 1:
                        seconds = statistics.median(
                            cold_first_batch(source) for _ in range(repeats)
                        )
                        cold[(pairs, label)] = seconds
                        fresh = f"{seconds:.2f}"
                    print(f"| {pairs} | {size:.2f} | {label} | {rank} | {ms:.1f} | "
                          f"{runs[-1][1]:,} | {fresh} |")  # fmt: skip
        print(f"(built {pairs} pairs in {built:.1f} s)", file=sys.stderr)
    for label in ("local", "http"):
        ratio = times[(2200, label, 0)] / times[(22, label, 0)]
        fresh = cold[(2200, label)] / cold[(22, label)]
        per_pair = (times[(2200, label, 0)] - times[(22, label, 0)]) / 2178 * 1000
        print(f"\n{label}: 2,200 pairs / 22 pairs: fresh process {fresh:.2f}x (acceptance: "
              f"<= 1.5x); loader alone {ratio:.2f}x, {per_pair:.0f} us more per pair")  # fmt: skip
    print()


def crops_per_second(source: str, batches: int, cache_dir: str | None = None) -> float:
    shardio._staged.clear()
    stream = loader.train_loader(
        source, crop_size=128, batch_size=8, seed=0, cache_mib=0, cache_dir=cache_dir
    )
    next(stream)  # the first pool (and, with a cache folder, the staging) not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    return batches * 8 / seconds


def bench_crops(work: Path, repeats: int, batches: int = 60) -> None:
    print("## Crops/s of 128^2 from 22 pairs of 640 x 472, decoded-region cache off")
    root = make_dataset(work / "crops", pairs=22, width=640, height=472)
    with RangeServer(work) as server:
        url = f"{server.url}/{root.name}"
        modes = {
            "local": lambda: crops_per_second(str(root), batches),
            "http, range reads": lambda: crops_per_second(url, batches),
            "http, staged in cache_dir": lambda: crops_per_second(
                url, batches, str(work / f"cache{time.monotonic_ns()}")
            ),
        }
        rates = {label: [] for label in modes}
        for _ in range(repeats):  # interleaved: every mode sees the same machine load
            for label, measure in modes.items():
                rates[label].append(measure())
    for label, values in rates.items():
        print(f"- {label}: {statistics.median(values):.0f} crops/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="train,first,crops")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        work = Path(tmp)
        chosen = set(args.only.split(","))
        if "train" in chosen:
            bench_train(work)
        if "first" in chosen:
            bench_first(work, args.repeats)
        if "crops" in chosen:
            bench_crops(work, args.repeats)


if __name__ == "__main__":
    main()
