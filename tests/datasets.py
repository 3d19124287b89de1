"""Tiny, valid DATA folders for tests: manifest + train/test/full shards (docs/formats.md §2).

Other test modules reuse :func:`make_dataset` instead of running the whole synth ->
register pipeline: it writes registered pairs straight through ``data_prep.shards`` with
the ``paper-split-v1`` split, in well under a second at the default size.

The images are random but structured so that a model can learn something: HR is a
specimen-like picture (smooth host texture, bright particles with sharp edges), and LR is
HR blurred by a Gaussian probe plus noise, in the same (registered) frame. So
``hr = f(lr) + detail`` and a model trained on the pairs beats the identity on the test
tiles.

:func:`write_dataset` takes explicit arrays, for tests that need to know exactly what each
pixel holds (for instance coordinate-coded images to check that LR and HR crops match).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from aeatrain.protocol.split import PROTOCOL, paper_split
from data_prep.shards import Sample, build_manifest, write_manifest, write_split


def split_regions(width: int, height: int) -> tuple[dict, dict[str, dict]]:
    """The paper split (data_prep.split): (train region, {"test0".."test2": region})."""
    split = paper_split(width, height)
    return split.train.as_dict(), {k: r.as_dict() for k, r in split.tests.items()}


def specimen_pair(
    rng: np.random.Generator, width: int, height: int, bit_depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """One registered (lr, hr) pair, (H, W) uint8|uint16: LR = blur(HR) + noise."""
    host = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 3.0)
    hr = 0.35 + 0.08 * host / (host.std() + 1e-6)
    for _ in range(max(4, width * height // 4000)):  # particles: bright discs, sharp edges
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(2, 8))
        cv2.circle(hr, centre, radius, float(rng.uniform(0.7, 0.9)), thickness=-1)
    hr = np.clip(hr, 0.0, 1.0)
    lr = cv2.GaussianBlur(hr, (0, 0), 1.6) + rng.normal(0.0, 0.03, hr.shape).astype(np.float32)
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16

    def quantise(image: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(image * top), 0, top).astype(dtype)

    return quantise(lr), quantise(hr)


def _sample_meta(name: str, region_id: str, region: dict, lr: np.ndarray, scale: float) -> dict:
    height, width = lr.shape
    split = "full" if region_id == "full" else ("train" if region_id == "train" else "test")
    return {
        "pair": name,
        "region_id": region_id,
        "split": split,
        "region": region,
        "image_size": {"width": width, "height": height},
        "bit_depth": 8 if lr.dtype == np.uint8 else 16,
        "scale": float(scale),
        "registration": {
            "homography": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            "inliers": 100,
            "rmse_px": 0.1,
            "ncc": 0.95,
        },
        "sources": {
            "lr": {
                "file": f"{name}_10000.png",
                "sha256": hashlib.sha256(name.encode()).hexdigest(),
            },
            "hr": {
                "file": f"{name}_20000.png",
                "sha256": hashlib.sha256(name.encode()).hexdigest(),
            },
        },
    }


def _crop(image: np.ndarray, region: dict) -> np.ndarray:
    return np.ascontiguousarray(image[region["y0"] : region["y1"], region["x0"] : region["x1"]])


def _split_samples(images: Mapping[str, tuple[np.ndarray, np.ndarray]], scale: float) -> dict:
    """Per split, the samples of every pair in pair-name order (docs/formats.md §2)."""
    samples: dict[str, list[Sample]] = {"train": [], "test": [], "full": []}
    for name in sorted(images):
        lr, hr = images[name]
        height, width = lr.shape
        train, tests = split_regions(width, height)
        meta = _sample_meta(name, "train", train, lr, scale)
        samples["train"].append(Sample(name, "train", _crop(lr, train), _crop(hr, train), meta))
        for tile_id, region in tests.items():
            meta = _sample_meta(name, tile_id, region, lr, scale)
            samples["test"].append(
                Sample(name, tile_id, _crop(lr, region), _crop(hr, region), meta)
            )
        whole = {"x0": 0, "y0": 0, "x1": width, "y1": height}
        meta = _sample_meta(name, "full", whole, lr, scale)
        meta.update(test_regions=tests, train_region=train)
        samples["full"].append(Sample(name, "full", lr, hr, meta))
    return samples


def write_dataset(
    root: str | Path,
    images: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    scale: float = 2.0,
    max_samples_per_shard: int = 64,
) -> Path:
    """Write registered ``{name: (lr, hr)}`` pairs as a DATA folder; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards = {
        split: write_split(root, split, samples, max_samples_per_shard=max_samples_per_shard)
        for split, samples in _split_samples(images, scale).items()
    }
    pairs = {}
    for name, (lr, _) in sorted(images.items()):
        height, width = lr.shape
        train, _ = split_regions(width, height)
        depth = 8 if lr.dtype == np.uint8 else 16
        pairs[name] = {"width": width, "height": height, "bit_depth": depth, "train_region": train}
    manifest = build_manifest(
        shards=shards,
        pairs=pairs,
        rejected={},
        protocol=dict(PROTOCOL),
        scale=scale,
        bar_row=None,
        command="tests/datasets.py write_dataset",
    )
    write_manifest(root, manifest)
    return root


def make_dataset(
    root: str | Path,
    *,
    pairs: int = 3,
    width: int = 320,
    height: int = 240,
    bit_depth: int = 8,
    seed: int = 0,
    max_samples_per_shard: int = 64,
) -> Path:
    """A DATA folder of ``pairs`` synthetic registered pairs named ``pair00, pair01, ...``.

    ``bit_depth`` is 8 or 16 for every pair; pass a small ``max_samples_per_shard`` to get
    several shards per split.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    rng = np.random.default_rng(seed)
    images = {f"pair{i:02d}": specimen_pair(rng, width, height, bit_depth) for i in range(pairs)}
    return write_dataset(root, images, max_samples_per_shard=max_samples_per_shard)


def coded_pair(k: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate-coded 16-bit (lr, hr): HR pixel (y, x) of pair k holds
    ``((y + 17 k) % 256) * 256 + x % 256`` and LR holds ``65535 - HR``."""
    yy, xx = np.mgrid[0:height, 0:width]
    hr = (((yy + 17 * k) % 256) * 256 + xx % 256).astype(np.uint16)
    return (65535 - hr).astype(np.uint16), hr
