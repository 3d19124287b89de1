"""Build a paired library non-local means run: ``python -m aeatrain.lbnlm``.

    python -m aeatrain.lbnlm --data DATA --out RUN [--pairs NAME ...] [--seed 0]
        [--overwrite]

The non-learning baseline of the paper's Table 1, in the spirit of the paired LB-NLM of
Qian et al. (IEEE TIP 2020); its exact parameters were not available, so the design is
ours (the method itself: aeatrain/models/lbnlm.py). The library holds co-located
(registered-LR patch, HR centre) pairs from the TRAINING regions of the chosen pairs: one
pair is self-training, all pairs (the default) or several is pooled. The patch size p,
the number of neighbours K, the bandwidth h and the library stride are chosen by a small
grid search on a held-out strip of the training region (its last ``STRIP`` columns; the
library for the search comes from the columns before it), never on the test tiles; the
final library is then built from the whole training region with the chosen settings.

RUN is a run folder like a trained one (``run.json`` says ``"model": {"name": "lbnlm"}``,
the library is ``model.safetensors``), so ``python -m aeatrain.evaluate --run RUN`` and
``python -m aeatrain.predict --run RUN`` use it unchanged. ``config.yaml`` records the
search: every candidate's held-out PSNR and the chosen one.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial import cKDTree

from aeatrain.errors import UserError, check_seed, reporting_write_errors, run_cli
from aeatrain.files.images import to_float
from aeatrain.files.outputs import check_writable
from aeatrain.models.lbnlm import LBNLM, nlm_weights
from aeatrain.run.final import RUN_JSON, read_run_json, write_run_files

log = logging.getLogger(__name__)

PATCHES = (5, 7)  # candidate patch sizes p
STRIDES = (2, 4)  # candidate library strides (px between library patch centres)
NEIGHBOURS = (4, 8, 16, 32)  # candidate K
H_FACTORS = (0.5, 1.0, 2.0, 4.0)  # h = factor x the median nearest-neighbour distance
COMPONENTS = 8  # PCA components of the keys (fixed; 4 lost most of the gain)
EPS = 1.0  # approximate neighbours: each within 2x the true distance; ~5x faster than exact
STRIP = 96  # held-out columns at the right end of each training region
VALIDATION_PIXELS = 20_000  # held-out pixels scored per candidate (over all pairs)
PCA_SAMPLES = 50_000  # library patches the PCA is fitted on


@dataclass(frozen=True)
class Region:
    """One pair's training region as float32 (H, W) in [0, 1], registered LR and HR."""

    pair: str
    lr: np.ndarray
    hr: np.ndarray


@dataclass(frozen=True)
class Settings:
    patch: int
    stride: int
    neighbours: int
    h: float


def load_regions(data: str | Path, pairs: list[str] | None) -> tuple[list[Region], object]:
    """The training regions of ``pairs`` (None: every pair) and the DATA manifest."""
    from aeatrain.data.manifest import check_pairs, load_manifest
    from aeatrain.data.streams import full_images

    manifest = load_manifest(data)
    if pairs is not None:
        check_pairs(pairs, manifest.pair_names, manifest.path, option="--pairs")
    regions = []
    for image in full_images(manifest, pairs=pairs):
        rows, cols = image.train_region.window
        lr = to_float(image.lr, image.bit_depth)[rows, cols]
        hr = to_float(image.hr, image.bit_depth)[rows, cols]
        regions.append(Region(image.pair, np.ascontiguousarray(lr), np.ascontiguousarray(hr)))
    return regions, manifest


def check_regions(regions: list[Region]) -> None:
    """Refuse regions that leave the search or the library empty, naming the pair."""
    if not regions:
        raise UserError("the data holds no training region for the chosen pairs: empty library")
    need = STRIP + 2 * max(PATCHES) + max(STRIDES)
    for region in regions:
        height, width = region.lr.shape
        if width < need or height < max(PATCHES):
            raise UserError(
                f"pair {region.pair}: training region {width} x {height} px leaves an empty "
                f"library (lbnlm needs at least {need} columns: a {STRIP}-column held-out strip "
                f"plus library patches)"
            )


def centres(shape: tuple[int, int], stride: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of library patch centres on a grid of ``stride``."""
    rows = np.arange(offset % stride, shape[0], stride)
    cols = np.arange(offset % stride, shape[1], stride)
    return rows, cols


def raw_patches(image: np.ndarray, patch: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows) * len(cols), p*p) patches centred on the grid (reflect padding)."""
    half = patch // 2
    padded = np.pad(image, half, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (patch, patch))  # (H, W, p, p)
    return windows[np.ix_(rows, cols)].reshape(-1, patch * patch)


def library_arrays(
    regions: list[Region], patch: int, stride: int, columns: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA mean (p*p,), basis (p*p, COMPONENTS), keys (N, COMPONENTS), values (N,).

    ``columns``: use only the first ``columns`` columns of every region (the search keeps
    the held-out strip out), None for the whole region. Patches near the cut see LR pixels
    past it by reflection only.
    """
    patches, values = [], []
    for region in regions:
        lr = region.lr if columns is None else region.lr[:, :columns]
        hr = region.hr if columns is None else region.hr[:, :columns]
        rows, cols = centres(lr.shape, stride)
        patches.append(raw_patches(lr, patch, rows, cols).astype(np.float32))
        values.append((hr[np.ix_(rows, cols)] - lr[np.ix_(rows, cols)]).reshape(-1))
    lr_patches = np.concatenate(patches)  # (N, p*p)
    sample = lr_patches[rng.choice(len(lr_patches), min(PCA_SAMPLES, len(lr_patches)), False)]
    mean = sample.mean(0, dtype=np.float64)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    basis = vt[:COMPONENTS].T.astype(np.float32)  # (p*p, COMPONENTS)
    keys = (lr_patches - mean.astype(np.float32)) @ basis
    return mean.astype(np.float32), basis, keys, np.concatenate(values).astype(np.float32)


def held_out_pixels(regions: list[Region], rng: np.random.Generator) -> list[tuple]:
    """Per region, random (rows, cols) in its held-out strip, VALIDATION_PIXELS in all."""
    per_region = max(1, VALIDATION_PIXELS // len(regions))
    chosen = []
    for region in regions:
        height, width = region.lr.shape
        first = width - STRIP + max(PATCHES) // 2  # clear of library patches' reach
        rows = rng.integers(0, height, per_region)
        cols = rng.integers(first, width, per_region)
        chosen.append((rows, cols))
    return chosen


def search(regions: list[Region], rng: np.random.Generator) -> tuple[Settings, list[dict]]:
    """Grid search on the held-out strips: PSNR of every candidate; the best settings."""
    columns = min(r.lr.shape[1] for r in regions) - STRIP
    pixels = held_out_pixels(regions, rng)
    targets = np.concatenate([r.hr[rows, cols] for r, (rows, cols) in zip(regions, pixels)])
    centre = np.concatenate([r.lr[rows, cols] for r, (rows, cols) in zip(regions, pixels)])
    scores = []
    for patch, stride in itertools.product(PATCHES, STRIDES):
        mean, basis, keys, values = library_arrays(regions, patch, stride, columns, rng)
        queries = np.concatenate(
            [_features_at(r.lr, patch, mean, basis, rows, cols) for r, (rows, cols) in
             zip(regions, pixels)]
        )  # fmt: skip
        distances, index = cKDTree(keys).query(queries, k=max(NEIGHBOURS), eps=EPS, workers=1)
        scale = float(np.median(distances[:, 0])) or 1e-6
        for neighbours, factor in itertools.product(NEIGHBOURS, H_FACTORS):
            h = factor * scale
            weights = nlm_weights(distances[:, :neighbours], h)
            correction = (weights * values[index[:, :neighbours]]).sum(1) / weights.sum(1)
            mse = float(np.mean((centre + correction - targets) ** 2))
            scores.append(
                {**asdict(Settings(patch, stride, neighbours, h)), "h_factor": factor,
                 "library_size": len(keys), "psnr": 10 * math.log10(1 / max(mse, 1e-12))}
            )  # fmt: skip
    best = max(scores, key=lambda s: s["psnr"])
    bicubic = float(np.mean((centre - targets) ** 2))
    log.info(
        "search: best %s, held-out PSNR %.2f dB (input %.2f dB)",
        {k: best[k] for k in ("patch", "stride", "neighbours", "h")},
        best["psnr"],
        10 * math.log10(1 / max(bicubic, 1e-12)),
    )
    settings = Settings(best["patch"], best["stride"], best["neighbours"], best["h"])
    return settings, scores


def _features_at(image, patch, mean, basis, rows, cols) -> np.ndarray:
    """PCA keys of the patches centred on the given pixels of ``image``."""
    half = patch // 2
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(image, half, mode="reflect"), (patch, patch)
    )
    return (windows[rows, cols].reshape(-1, patch * patch) - mean) @ basis


def build(regions: list[Region], seed: int) -> tuple[LBNLM, Settings, list[dict]]:
    """Search the settings, then fill an LBNLM with the whole training regions' library."""
    check_regions(regions)
    rng = np.random.default_rng(seed)
    settings, scores = search(regions, rng)
    mean, basis, keys, values = library_arrays(regions, settings.patch, settings.stride, None, rng)
    model = LBNLM(
        patch=settings.patch,
        components=COMPONENTS,
        neighbours=settings.neighbours,
        h=settings.h,
        eps=EPS,
        library_size=len(keys),
    )
    model.set_library(mean, basis, keys, values)
    return model, settings, scores


def check_out(out: Path, overwrite: bool) -> None:
    """--out must be new, empty, or (with --overwrite) an lbnlm run folder, and writable."""
    check_writable(out, "--out")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not (out / RUN_JSON).is_file():
        raise UserError(f"{out}: not empty and holds no aeatrain run; choose another --out")
    name = read_run_json(out).model.name
    if name != "lbnlm":
        raise UserError(f"{out}: holds a {name!r} run, not an lbnlm one; choose another --out")
    if not overwrite:
        raise UserError(f"{out}: holds an lbnlm run already; pass --overwrite to replace it")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.lbnlm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", required=True, help="DATA folder (manifest.json + shards)")
    parser.add_argument("--out", required=True, type=Path, help="run folder to write")
    parser.add_argument(
        "--pairs", nargs="+", help="library from these pairs only (one = self-training)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the held-out pixels and the PCA sample (0 to 4294967295)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an lbnlm run in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_seed(args.seed)
    check_out(args.out, args.overwrite)
    start = time.perf_counter()
    regions, manifest = load_regions(args.data, args.pairs)
    model, settings, scores = build(regions, args.seed)
    seconds = time.perf_counter() - start
    kwargs = {
        "patch": settings.patch,
        "components": COMPONENTS,
        "neighbours": settings.neighbours,
        "h": settings.h,
        "eps": EPS,
        "library_size": int(model.keys.shape[0]),
    }
    config = {
        "model": {"name": "lbnlm", **kwargs},
        "data": {"root": str(args.data), "pairs": sorted(set(args.pairs)) if args.pairs else None},
        "lbnlm": {"seed": args.seed, "stride": settings.stride, "strip_columns": STRIP,
                  "build_seconds": round(seconds, 1), "search": scores},
    }  # fmt: skip
    with reporting_write_errors(args.out):  # a disk that fills up meanwhile
        write_run_files(
            args.out,
            model=model,
            model_name="lbnlm",
            model_kwargs=kwargs,
            scale=manifest.scale,
            bit_depths=manifest.bit_depths,
            dataset={"path": str(args.data), "manifest_sha256": manifest.sha256},
            step=0,
            config_yaml=yaml.safe_dump(config, sort_keys=False),
        )
    print(
        f"lbnlm: {len(regions)} pair(s), library of {kwargs['library_size']} patches "
        f"(p {settings.patch}, stride {settings.stride}, K {settings.neighbours}, "
        f"h {settings.h:.4g}) in {seconds:.1f} s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
