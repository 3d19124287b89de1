"""Writing synthetic pairs: ``synthesize`` (``data_prep synth``: one specimen family, a
folder of pairs and its ``truth.json``), ``synthesize_mix`` (``data_prep synth-mix``:
several families under their own settings) and ``Truth``, the typed ``truth.json``.

How each pair is made is data_prep/synth/__init__.py's story: a specimen of the run's
family (families.py) rendered on a fine canvas (canvas.py), scanned twice (scan.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from aeatrain.data.format import read_document
from aeatrain.errors import UserError
from aeatrain.files.images import encode_image, from_float
from aeatrain.files.microscope import fei_tag_text, zeiss_tag_text
from aeatrain.files.outputs import SYNTH_RAW, nearest_existing
from data_prep.outdir import check_target, staged_output
from data_prep.parallel import parallel_map
from data_prep.registration import Homography
from data_prep.synth.canvas import CANVAS_MARGIN_LR_PX
from data_prep.synth.config import SynthConfig, preset_config
from data_prep.synth.families import FAMILIES, SpecimenModel, draw_aggregates
from data_prep.synth.scan import acquire, acquisition_pair, data_bar

GENERATOR = "aeatrain.synth"
VERSION = 1
TRUTH_JSON = "truth.json"
# format -> (suffix, bit depth, vendor tags): fei-tif and zeiss-tif carry the metadata
# those microscopes write (aeatrain/files/microscope.py), LZW-compressed like Fiji's TIFFs
FORMATS = {
    "bmp": (".bmp", 8, None),
    "tif16": (".tif", 16, None),
    "fei-tif": (".tif", 16, "fei"),
    "zeiss-tif": (".tif", 16, "zeiss"),
}
# peak memory of rendering one pair, per canvas pixel: 25-30 bytes measured at 640 x 480
# to 2560 x 1888 (float32 canvas, labels, distances, rims, the blurred windows)
_BYTES_PER_CANVAS_PX = 32
_NM_PER_LR_PX = 10.0  # LR pixel size written on the data bar (12.8 um field at 1280 px)


def pair_name(index: int) -> str:
    return f"syn{index:03d}"


def make_pair(
    config: SynthConfig, spec: SpecimenModel, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One pair: (lr, hr) full files as (height + bar_rows, width) arrays, and its truth.

    Deterministic in (config, spec, seed, index): pair ``i`` is the same whatever the
    number of pairs or workers.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index + 1,)))
    lr_acq, hr_acq, truth = acquisition_pair(config, rng)
    canvas = spec.render(rng, config)
    images = []
    for acq, mag in ((lr_acq, config.lr_magnification), (hr_acq, config.hr_magnification)):
        area = acquire(canvas, acq, config, rng)
        bar = data_bar(config, mag, _NM_PER_LR_PX * acq.pixel_lr_px)
        images.append(from_float(np.vstack([area, bar]), config.bit_depth))
    return images[0], images[1], truth


def vendor_tags(vendor: str | None, config: SynthConfig, magnification: int) -> list:
    """tifffile ``extratags`` with the metadata an FEI or Zeiss SEM would write: the
    nominal pixel size (10 nm at the LR magnification), and for FEI the data-bar row."""
    if vendor is None:
        return []
    pixel_nm = _NM_PER_LR_PX * config.lr_magnification / magnification
    if vendor == "fei":
        text = fei_tag_text(
            pixel_nm,
            bar_row=config.height,
            width=config.width,
            hv_kv=5.0,
            detector="ETD",
            system="aeatrain synth",
        )
        return [(34682, "s", 0, text, True)]  # FEI_HELIOS
    text = zeiss_tag_text(
        pixel_nm, width=config.width, magnification=magnification, hv_kv=5.0, detector="SE2"
    )
    return [(34118, "s", 0, text, True)]  # CZ_SEM


def _write_pair(job: tuple) -> tuple[str, dict]:
    """Worker: make pair ``index`` and write its two files into ``out``."""
    config, spec, seed, index, out, image_format = job
    suffix, _, vendor = FORMATS[image_format]
    lr, hr, truth = make_pair(config, spec, seed, index)
    name = pair_name(index)
    files = {}
    for key, image, mag in (
        ("lr_file", lr, config.lr_magnification),
        ("hr_file", hr, config.hr_magnification),
    ):
        files[key] = f"{name}_{mag}{suffix}"
        tags = vendor_tags(vendor, config, mag)
        data = encode_image(image, suffix, extratags=tags, compression="lzw" if vendor else None)
        # plain writes: the whole folder is staged and renamed (and keeps the umask's mode)
        (Path(out) / files[key]).write_bytes(data)
    return name, {**files, **truth}


def _available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None: not checked."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def check_fits(out: Path, pairs: int, config: SynthConfig, image_format: str, workers: int):
    """Refuse, before any work, a run that cannot fit: the pairs rendered at once need
    more memory than is available, or the files more disk than is free beside ``out``."""
    gib = 2**30
    margin = 2 * CANVAS_MARGIN_LR_PX
    canvas_px = (config.width + margin) * (config.height + margin) * config.canvas_density**2
    per_pair = canvas_px * _BYTES_PER_CANVAS_PX
    available = _available_memory_bytes()
    size = f"{config.width}x{config.height} at scale {config.scale:g}"
    if available is not None and per_pair > available:
        raise UserError(
            f"--width/--height {size}: rendering one pair needs about {per_pair / gib:.1f} GiB "
            f"of memory, {available / gib:.1f} GiB is available; choose a smaller image area"
        )
    at_once = min(workers, pairs)
    if available is not None and per_pair * at_once > available:
        raise UserError(
            f"--workers {workers}: {at_once} pairs of {size} rendered at once need about "
            f"{per_pair * at_once / gib:.1f} GiB of memory, {available / gib:.1f} GiB is "
            f"available; use --workers {max(1, int(available // per_pair))}"
        )
    _, bit_depth, _ = FORMATS[image_format]
    disk = pairs * 2 * config.width * (config.height + config.bar_rows) * bit_depth // 8
    free = shutil.disk_usage(nearest_existing(out)).free
    if disk > free:
        raise UserError(
            f"{out}: --pairs {pairs} of {config.width}x{config.height + config.bar_rows} "
            f"pixels need up to {disk / gib:.1f} GiB of disk, {free / gib:.1f} GiB is free "
            "there; use fewer --pairs or a smaller image area"
        )


def synthesize(
    out: str | os.PathLike,
    *,
    pairs: int,
    seed: int,
    config: SynthConfig | None = None,
    draw: Callable[[np.random.Generator], SpecimenModel] = draw_aggregates,
    image_format: str = "bmp",
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write ``pairs`` synthetic pairs and ``truth.json`` into ``out``; returns the truth.

    ``draw`` draws the run's material system (``FAMILIES`` has one per
    ``--family``). The folder appears complete or not at all (staged beside it, then
    renamed). A run that cannot fit in memory or on disk is refused first (check_fits).
    """
    if pairs < 1:
        raise UserError(f"--pairs: {pairs} < 1")
    if image_format not in FORMATS:
        raise UserError(f"--format: {image_format!r}; expected one of {', '.join(FORMATS)}")
    _, bit_depth, _ = FORMATS[image_format]
    config = replace(config or SynthConfig(), bit_depth=bit_depth)
    out = Path(out)
    check_fits(out, pairs, config, image_format, workers)
    check_target(out, SYNTH_RAW, overwrite=overwrite)
    spec = draw(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))
    with staged_output(out, SYNTH_RAW, overwrite=overwrite) as staging:
        jobs = [(config, spec, seed, i, staging, image_format) for i in range(pairs)]
        results = parallel_map(_write_pair, jobs, workers=workers, desc="synth")
        truth = {
            "generator": GENERATOR,
            "version": VERSION,
            "seed": seed,
            "scale": config.scale,
            "bar_row": config.height,
            "config": asdict(config),
            "family": spec.family,
            "specimen": asdict(spec),
            "pairs": dict(results),
        }
        Truth.model_validate(truth)  # the writer cannot drift from the reader
        text = json.dumps(truth, indent=2) + "\n"
        (staging / TRUTH_JSON).write_text(text, encoding="utf-8")
    return truth


# --- a pooled set of several families ------------------------------------------------------

# ``synth-mix``: specimen families under their own acquisition settings (overrides of the
# realistic preset), for a pooled training set of *different* images: the paper's argument
# for batch-aware attention is about features shared across them.
MIX: dict[str, dict[str, float]] = {
    "clusters": {},  # the realistic preset as it is: dose 24
    "grains": {"dose": 12.0, "bandwidth_px": 1.0},  # noisier, more correlated noise
    "fibres": {"dose": 40.0, "contrast": 0.7, "line_offset": 0.008},  # faint, striped
    "porous": {"dose": 18.0, "shading": 0.08, "highlight_gain": 1.2},  # uneven, less clipped
}


def synthesize_mix(
    out: str | os.PathLike,
    *,
    pairs_per_family: int,
    seed: int,
    workers: int = 1,
    **size,
) -> list[tuple[str, str, str]]:
    """One ``synth`` folder per family of :data:`MIX` (realistic preset plus the family's
    settings; ``size``: width, height, bar_rows) in ``out``, and ``out/pairs.csv`` naming
    every pair ``<family>-synNNN`` for ``build --pairs-file``. Family ``k`` takes seed
    ``seed + k``. Returns the (name, lr, hr) rows; ``out`` appears complete or not at all."""
    if pairs_per_family < 1:
        raise UserError(f"--pairs-per-family: {pairs_per_family} < 1")
    out = Path(out)
    check_target(out, SYNTH_RAW, overwrite=False)
    rows = []
    with staged_output(out, SYNTH_RAW, overwrite=False) as staging:
        for k, (family, settings) in enumerate(MIX.items()):
            truth = synthesize(
                staging / family,
                pairs=pairs_per_family,
                seed=seed + k,
                config=preset_config("realistic", **size, **settings),
                draw=FAMILIES[family],
                workers=workers,
            )
            rows += [
                (f"{family}-{name}", f"{family}/{pair['lr_file']}", f"{family}/{pair['hr_file']}")
                for name, pair in truth["pairs"].items()
            ]
        lines = ["name,lr,hr", *(",".join(row) for row in rows)]
        (staging / "pairs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


class TruthPair(BaseModel):
    """One pair of ``truth.json``: its two files and the true LR->HR homography (the
    rotation, scale error and offsets that made it are kept as further keys)."""

    model_config = ConfigDict(extra="allow")

    lr_file: str
    hr_file: str
    homography: Homography


class Truth(BaseModel):
    """``RAW/truth.json`` of ``data_prep synth`` (docs/formats.md): how the folder was
    made (generator, seed, config, specimen as further keys) and each pair's truth."""

    model_config = ConfigDict(extra="allow")

    generator: Literal["aeatrain.synth"]
    version: int
    seed: int
    scale: float
    bar_row: int  # the images' height: the data bar starts here
    family: str | None = None  # None: written before the families
    pairs: dict[str, TruthPair]


def read_truth(raw: str | Path) -> Truth:
    """``raw/truth.json`` checked; UserError naming the file and the field."""
    return read_document(Path(raw) / TRUTH_JSON, Truth, "a truth.json of data_prep synth")
