"""Cost of the paired library non-local means on one core (docs/benchmarks.md).

For one 1280 x 944 image, self-trained (the library from that pair's training region) and
pooled (from every pair's): the seconds to search the settings and build the library, the
library's size, and the seconds to predict the whole image (``aeatrain.protocol.inference.
predict_full``), wall and CPU (the machine may be shared: CPU seconds are the steadier
figure). One thread: OMP_NUM_THREADS=1 is set before NumPy loads, the kd-tree queries run
with workers=1.

    python benchmarks/bench_lbnlm.py [--data DATA] [--pairs 4]

Without ``--data`` it writes ``--pairs`` synthetic 1280 x 944 pairs (tests/datasets.py) to
a temporary folder.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before NumPy/torch load their thread pools

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from aeatrain.data.manifest import load_manifest  # noqa: E402
from aeatrain.data.streams import full_images  # noqa: E402
from aeatrain.files.images import to_float  # noqa: E402
from aeatrain.lbnlm import build, load_regions  # noqa: E402
from aeatrain.protocol.inference import predict_full  # noqa: E402


def timed(function):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(data: Path, pairs: list[str] | None, image) -> dict:
    regions, _ = load_regions(data, pairs)
    (model, settings, _), build_wall, build_cpu = timed(lambda: build(regions, seed=0))
    lr = to_float(image.lr, image.bit_depth)
    _, predict_wall, predict_cpu = timed(lambda: predict_full(model, lr))
    return {
        "pairs": len(regions),
        "library": int(model.keys.shape[0]),
        "settings": f"p {settings.patch}, stride {settings.stride}, K {settings.neighbours}",
        "build": (build_wall, build_cpu),
        "predict": (predict_wall, predict_cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a DATA folder of 1280 x 944 pairs")
    parser.add_argument("--pairs", type=int, default=4, help="synthetic pairs without --data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from tests.datasets import make_dataset

            data = make_dataset(Path(tmp) / "DATA", pairs=args.pairs, width=1280, height=944)
        manifest = load_manifest(data)
        first = manifest.pair_names[0]
        (image,) = full_images(manifest, pairs=[first])
        print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread")
        print(f"image {first}: {image.lr.shape[1]} x {image.lr.shape[0]}")
        print(
            "| library | pairs | patches | chosen | build s (wall / CPU) | predict s (wall / CPU) |"
        )
        print("|---|---|---|---|---|---|")
        for label, pairs in (("self", [first]), ("pooled", None)):
            row = measure(data, pairs, image)
            build_s, predict_s = row["build"], row["predict"]
            print(
                f"| {label} | {row['pairs']} | {row['library']:,} | {row['settings']} | "
                f"{build_s[0]:.1f} / {build_s[1]:.1f} | {predict_s[0]:.1f} / {predict_s[1]:.1f} |"
            )


if __name__ == "__main__":
    main()
