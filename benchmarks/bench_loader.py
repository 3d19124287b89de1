"""Training-stream throughput on ONE CPU core (figures in docs/benchmarks.md, "Loader").

Measures what ``aeatrain.data.loader.train_loader`` delivers to a trainer, decode included:
random 256x256 crops per second and whole-training-region ("full-resolution", 944x960)
crops per second, with ``torch.set_num_threads(1)``, OpenCV on one thread and
``num_workers=0``, so every figure is one core's work. Also the cost of decoding one
training region (LR + HR PNG), which is what the region pool amortises.

The dataset is a full-size one: 22 registered pairs of 1280x944 (train regions 960x944),
8 bit. Without ``--data`` it is written into a temporary folder by
``tests/datasets.make_dataset`` (about 10 s); ``--data DATA`` measures any DATA folder
instead (for instance one from ``python -m data_prep synth`` + ``build``).

Each configuration runs ``--repeats`` times, interleaved so that every configuration
sees the same machine load; the table gives medians, per wall second and per CPU second
of the benchmark process (on a shared machine the latter is what one free core does).

    python benchmarks/bench_loader.py [--data DATA] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aeatrain.data import loader, sources  # noqa: E402
from aeatrain.data.manifest import load_manifest  # noqa: E402
from tests.datasets import make_dataset  # noqa: E402

ACCEPTANCE_CROPS_PER_SECOND = 500  # issue 2: random 256x256 crops/s on one core


def crops_per_second(
    root: Path, *, crop_size: int | None, batch_size: int, steps: int, warmup: int, **options
) -> tuple[float, float, float]:
    """Over ``steps`` batches: crops per wall second, crops per CPU second of the whole
    process, and CPU microseconds per crop of the calling (trainer's) thread.

    ``warmup`` batches first (scan, first pools, filling the cache); the timed ones
    include every later pool's decoding. CPU seconds count this process's work only, so
    on a shared machine they say what one free core would do.
    """
    stream = loader.train_loader(
        root, crop_size=crop_size, batch_size=batch_size, seed=0, **options
    )
    for _ in range(warmup):
        next(stream)
    wall, cpu, mine = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(steps):
        next(stream)
    crops = steps * batch_size
    rates = (
        crops / (time.perf_counter() - wall),
        crops / (time.process_time() - cpu),
        1e6 * (time.thread_time() - mine) / crops,
    )
    stream.close()
    return rates


def region_decode_ms(root: Path, repeats: int = 10) -> float:
    """CPU milliseconds to decode one training region's LR and HR PNGs (the unit cost)."""
    manifest = load_manifest(root, verify_checksums=False)
    regions = sources.scan(manifest.shards("train"))
    start = time.process_time()
    for i in range(repeats):
        loader._decode_regions(regions, [i % len(regions)])
    return 1000 * (time.process_time() - start) / repeats


def configurations(args) -> dict[str, dict]:
    """Label -> settings. 160 batches of 256^2 crops = 10 pool epochs; the 12 warm-up
    batches of whole regions draw 96 regions, so the cache most likely holds all 22."""
    crops = {"crop_size": 256, "batch_size": 8, "steps": 160, "warmup": 160}
    full = {"crop_size": None, "batch_size": 8, "steps": args.full_steps, "warmup": 12}
    return {
        "256x256 crops": crops,
        "256x256 crops, D4 augment": {**crops, "augment": True},
        "256x256 crops, no cache (decode every pool)": {**crops, "cache_mib": 0},
        "full-resolution crops": full,
        "full-resolution crops, D4 augment": {**full, "augment": True},
        "full-resolution crops, no cache (decode every crop)": {**full, "cache_mib": 0},
        # Not one core: background threads make the batches; the last column says what
        # the trainer's own thread still pays per crop.
        "256x256 crops, 2 worker threads": {**crops, "num_workers": 2},
        "full-resolution crops, 2 worker threads": {**full, "num_workers": 2},
    }


def measure(root: Path, args) -> tuple[dict[str, list[tuple[float, float, float]]], list[float]]:
    """Every configuration ``--repeats`` times, interleaved so all see the same load."""
    rates: dict[str, list[tuple[float, float, float]]] = {
        label: [] for label in configurations(args)
    }
    decode = []
    for _ in range(args.repeats):
        for label, settings in configurations(args).items():
            rates[label].append(crops_per_second(root, **settings))
        decode.append(region_decode_ms(root))
    return rates, decode


def region_size(root: Path) -> tuple[int, int]:
    """(height, width) of the first pair's training region."""
    pairs = load_manifest(root, verify_checksums=False).pairs
    box = next(iter(pairs.values())).train_region
    return box.height, box.width


def report(
    root: Path, rates: dict[str, list[tuple[float, float, float]]], decode: list[float]
) -> None:
    height, width = region_size(root)
    pairs = len(sources.pair_names(root))
    print(f"dataset: {root} ({pairs} pairs, train regions {width}x{height})")
    print("torch threads 1, OpenCV threads 1, num_workers 0 unless said, batch 8, default pool\n")
    print("| stream | crops/s (wall) | crops per CPU-second | trainer-thread CPU per crop |")
    print("|---|---:|---:|---:|")
    for label, values in rates.items():
        wall, cpu, mine = (statistics.median(v[k] for v in values) for k in range(3))
        print(f"| {label} | {wall:.0f} | {cpu:.0f} | {mine:.0f} µs |")
    print(f"\ndecoding one training region (LR + HR PNG): {statistics.median(decode):.1f} CPU ms")
    crops = statistics.median(v[1] for v in rates["256x256 crops"])
    full = statistics.median(v[1] for v in rates["full-resolution crops"])
    print(f"ratio of crops per CPU-second, 256x256 / full-resolution: {crops / full:.1f}")
    print(
        f"pixels per CPU-second: 256x256 {crops * 256 * 256 / 1e6:.0f} MP, "
        f"full-resolution {full * height * width / 1e6:.0f} MP"
    )
    one_core = [k for k in rates if "256" in k and "workers" not in k]
    slowest = min(statistics.median(v[1] for v in rates[k]) for k in one_core)
    verdict = "PASS" if slowest >= ACCEPTANCE_CROPS_PER_SECOND else "FAIL"
    print(
        f"acceptance (>= {ACCEPTANCE_CROPS_PER_SECOND} random 256x256 crops/s on one core, "
        f"slowest 256x256 row {slowest:.0f}): {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a DATA folder (default: write a full-size one)")
    parser.add_argument("--pairs", type=int, default=22, help="pairs of the written dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--full-steps", type=int, default=4, help="batches of full-resolution crops"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as scratch:
        root = args.data
        if root is None:
            start = time.perf_counter()
            root = make_dataset(Path(scratch) / "DATA", pairs=args.pairs, width=1280, height=944)
            print(
                f"wrote a {args.pairs}-pair 1280x944 dataset in {time.perf_counter() - start:.1f} s"
            )
        report(root, *measure(root, args))


if __name__ == "__main__":
    main()
