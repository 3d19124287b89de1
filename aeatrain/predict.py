"""Super-resolve new LR images with a trained run: ``python -m aeatrain.predict``.

    python -m aeatrain.predict --run RUN --input IMAGE_OR_FOLDER [...] --output DIR
        [--tile S --overlap O] [--tta none|d4] [--weights auto|ema|raw]
        [--bar-row N | --no-bar] [--page N] [--float32] [--overwrite] [--device cpu|cuda]

Each input (any size, 8 or 16 bit, BMP/PNG/TIFF; a folder means its images) is
upsampled by the run's scale with bicubic interpolation (as the registered LR the model
was trained on), run through the model and written to ``DIR/<input name>`` with the
input's bit depth and format (``--float32``: a float32 TIFF on the input's scale, neither
rounded nor clipped). Large images are predicted in tiles blended without seams
(aeatrain.inference.tiled_rows) and written as the tiles finish their rows, so memory is
set by the tile size and the image width, not the image's size. ``--tta d4`` averages the predictions of the image's 8
flips/rotations (the D4 self-ensemble, 8x the time).

Fail fast: every input is read and every output path checked before the first image is
predicted, so a bad file in a folder (unreadable, truncated, an absurd header) stops the
run with one line naming it and exit 2, and nothing is written. Inputs are never
overwritten; existing outputs only with ``--overwrite``, and only files aeatrain wrote
(listed in ``DIR/aeatrain-outputs.json``, which predict updates last, with the outputs
it wrote, also those written before a failure; aeatrain.files.outputs).

Files from microscopes (aeatrain/files/microscope.py): the data bar is cut as ``data_prep
build`` cuts it (``--bar-row``/``--no-bar``, else the row the vendor metadata records,
FEI ``ResolutionY``, TESCAN ``ImageStripSize``, JEOL ``$CM_FULL_SIZE``; else row 944 of
a 1280 x 1024 image, the public dataset's layout; else a detected vendor data bar; else
none; a cut is logged); an input with a recorded pixel size gives a calibrated TIFF (ImageJ unit nm,
X/Y resolution = 1 / (input pixel size / scale)), the input's vendor metadata in its
ImageJ Info. Only TIFF content carries a calibration; a TIFF named .png or .bmp gives
an output of that name and format, with a warning that the calibration is lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from aeatrain.errors import UserError, run_cli
from aeatrain.files.images import (
    IMAGE_SUFFIXES,
    LazyRows,
    from_float,
    max_value,
    open_image_rows,
    read_image,
    to_float,
    write_image_rows,
)
from aeatrain.files.microscope import Calibration, cut_data_bar, read_calibration
from aeatrain.files.outputs import check_replaceable_file, record_outputs
from aeatrain.inference import (
    TTA_MODES,
    check_tiling,
    choose_device,
    predict_full,
    predict_tiled,
    self_ensemble,
    tiled_rows,
)
from aeatrain.malloc import keep_freed_memory
from aeatrain.run.final import finite_output
from aeatrain.run.options import add_loading_arguments

log = logging.getLogger(__name__)

AUTO_TILE_PIXELS = 2_500_000  # above this (upsampled) size, tile: ~2 GB peak for the U-Net
AUTO_TILE, AUTO_OVERLAP = 1024, 128
LAZY_INPUT_PIXELS = 4 * 2**20  # inputs this large (8 MiB at 16 bits) are read a band at a time
OUTPUT_ROWS = 256  # rows of the prediction converted to the output type at a time


def upsample(image: np.ndarray | LazyRows, scale: float) -> np.ndarray | LazyRows:
    """Bicubic upsampling of an integer (H, W) image by ``scale`` (OpenCV INTER_CUBIC).

    Done on the integer image, like data_prep's bicubic warp, so the model sees the
    same kind of input (saturated, rounded) it was trained on. Fields of view align at
    the outer pixel edges. The output is ``round(W * scale) x round(H * scale)``. A
    :class:`~aeatrain.files.images.LazyRows` input stays lazy at a whole-number scale
    (:class:`BicubicRows`, the same pixels computed a band at a time); at other scales
    it is read whole first.
    """
    h, w = image.shape
    size = output_shape(image.shape, scale)[::-1]  # (width, height)
    if size == (w, h):
        return image  # not a copy: a 16-bit 8192 x 8192 input is 128 MiB
    if isinstance(image, LazyRows):
        if size[0] % w == 0 and size == (w * (size[0] // w), h * (size[0] // w)):
            return BicubicRows(image, size[0] // w)
        image = np.asarray(image)
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


class BicubicRows(LazyRows):
    """``cv2.resize(source, (k W, k H), INTER_CUBIC)`` of a lazy (H, W) source, computed a
    band at a time: the rows of a band come from the source rows they need plus
    ``MARGIN`` on each side, which at a whole-number scale ``k`` gives the very pixels
    of resizing the whole image (bicubic reaches 2 source rows; tested bit for bit)."""

    MARGIN = 3

    def __init__(self, source: LazyRows, k: int) -> None:
        super().__init__((source.shape[0] * k, source.shape[1] * k), source.dtype)
        self._source, self._k = source, k

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        k, height = self._k, self._source.shape[0]
        s0, s1 = max(0, r0 // k - self.MARGIN), min(height, -(-r1 // k) + self.MARGIN)
        band = np.asarray(self._source[s0:s1])
        size = (band.shape[1] * k, band.shape[0] * k)
        return cv2.resize(band, size, interpolation=cv2.INTER_CUBIC)[r0 - s0 * k : r1 - s0 * k]


def output_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of the prediction of an (H, W) input: each side times ``scale``, rounded."""
    h, w = shape
    return max(1, round(h * scale)), max(1, round(w * scale))


@dataclass(frozen=True)
class InputImage:
    """An input read and cut: ``image`` (H, W) integer (read, or lazy: ``read_input``),
    its bit depth and calibration."""

    image: np.ndarray | LazyRows
    bit_depth: int
    calibration: Calibration | None


def read_input(path: Path, args: argparse.Namespace, *, lazy: bool = False) -> InputImage:
    """Read an input (``--page``), cut its data bar as data_prep build does
    (aeatrain.files.microscope.cut_data_bar: ``--no-bar``, ``--bar-row``, the vendor's row, the
    public layout's, a detected bar, or none; a cut is logged naming the file).

    ``lazy``: an input large enough to be tiled and stored as raw strips comes as a
    :class:`~aeatrain.files.images.LazyRows`, read a band at a time as the tiles need it
    (:func:`~aeatrain.files.images.open_image_rows`); the same pixels as a whole read.
    """
    if lazy:
        image, bit_depth = open_image_rows(path, page=args.page, min_pixels=LAZY_INPUT_PIXELS)
    else:
        image, bit_depth = read_image(path, page=args.page)
    calibration = read_calibration(path)
    image, _ = cut_data_bar(image, path, calibration, bar_row=args.bar_row, no_bar=args.no_bar)
    return InputImage(image, bit_depth, calibration)


def output_calibration(
    source: Path, calibration: Calibration | None, scale: float
) -> tuple[float | None, str | None]:
    """(pixel size nm, ImageJ Info text) of an output ``scale`` x finer than ``source``;
    (None, None) when the source records no pixel size."""
    if calibration is None or calibration.pixel_size_nm is None:
        return None, None
    pixel_nm = calibration.pixel_size_nm / scale
    info = {
        "aeatrain": f"super-resolved x{scale:g} from {source.name}",
        "pixel_size_nm": pixel_nm,
        "source_pixel_size_nm": calibration.pixel_size_nm,
        "source_microscope": calibration.as_record(),
    }
    return pixel_nm, json.dumps(info, sort_keys=True)


def write_calibrated(
    target: Path,
    bands: Iterable[np.ndarray],
    shape: tuple[int, int],
    dtype: type,
    source: Path,
    calibration,
    scale: float,
    overwrite: bool,
) -> None:
    """Write an output arriving as row bands (a TIFF streamed as they come); a TIFF of a
    calibrated source carries its calibration."""
    pixel_nm, info = output_calibration(source, calibration, scale)
    if pixel_nm is not None and target.suffix.lower() not in (".tif", ".tiff"):
        log.warning("%s: %s holds no calibration; the pixel size is lost", target, target.suffix)
        pixel_nm = info = None
    write_image_rows(
        target, bands, shape, dtype, overwrite=overwrite, pixel_size_nm=pixel_nm, info=info
    )


def super_resolve_rows(
    model: nn.Module,
    image: np.ndarray | LazyRows,
    *,
    scale: float,
    tile: int | None = None,
    overlap: int = AUTO_OVERLAP,
    device: torch.device | None = None,
    tta: str = "none",
) -> Iterator[np.ndarray]:
    """Integer LR (H, W) -> the float32 prediction at ``scale`` x the size, in about
    [0, 1], as row bands top to bottom.

    ``tile`` None: the whole image at once unless it exceeds ``AUTO_TILE_PIXELS`` once
    upsampled, then tiles of 1024 with ``overlap``; 0: always whole; S: tiles of S.
    Tiled without ``tta``, the bands come as the tiles finish them (``tiled_rows``), so
    memory is bounded by the tile size and the image width (with a lazy ``image``, the
    input too is read and upsampled a band of tiles at a time); whole, or with ``tta``
    "d4" (the mean over the image's 8 flips/rotations, ``self_ensemble``), one band is
    the whole image.
    """
    upsampled = upsample(image, scale)  # integer: converted to float a tile at a time
    del image  # the caller lets go of the input too: only its upsampling is held
    if tile is None:
        tile = AUTO_TILE if upsampled.size > AUTO_TILE_PIXELS else 0
        if tile:
            log.info(
                "%dx%d is large: tiles of %d, overlap %d",
                upsampled.shape[1],
                upsampled.shape[0],
                tile,
                overlap,
            )
    if tile and tta == "none":
        yield from tiled_rows(model, upsampled, tile=tile, overlap=overlap, device=device)
        return

    def predict(lr: np.ndarray) -> np.ndarray:
        if tile == 0:
            return predict_full(model, lr, device=device)
        return predict_tiled(model, lr, tile=tile, overlap=overlap, device=device)

    yield self_ensemble(predict, to_float(np.asarray(upsampled)), tta)


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def collect_inputs(paths: list[str]) -> list[Path]:
    """Files as given, folders as their image files (not recursive, sorted by name; a
    subfolder named like an image, ``scans.tif/``, is skipped with a warning)."""
    inputs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            named = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            found = [p for p in named if not p.is_dir()]
            folders = [p.name for p in named if p.is_dir()]
            if folders:
                log.warning(
                    "%s: skipping %d folder(s) named like images: %s",
                    path,
                    len(folders),
                    ", ".join(folders[:5]),
                )
            if not found:
                raise UserError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            inputs.extend(found)
        elif path.is_file():
            inputs.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return inputs


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def plan_jobs(inputs: list[Path], output: Path, *, float32: bool, overwrite: bool) -> list[Job]:
    """Pair each input with its output path and refuse, before any work, every clash.

    Refused: an output that IS an input (even with --overwrite), two inputs with one
    output name, an existing output without --overwrite or (with it) one that aeatrain
    did not write (aeatrain.files.outputs), an output folder that is a file.
    """
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: --output must be a folder, this is a file")
    jobs, seen = [], {}
    all_inputs = {p.resolve() for p in inputs}
    for source in inputs:
        name = source.stem + ".tif" if float32 else source.name
        target = output / name
        if target.resolve() in all_inputs or _same_file(source, target):
            raise UserError(f"{target}: output path equals an input; choose another --output")
        if target in seen:
            raise UserError(f"{seen[target]} and {source} would both be written to {target}")
        check_replaceable_file(target, overwrite=overwrite)
        seen[target] = source
        jobs.append(Job(source, target))
    return jobs


def check_inputs(jobs: list[Job], args: argparse.Namespace) -> None:
    """Read every input once before the first prediction: a bad file (unreadable, a
    wrong --page, an absurd header) stops the run with one line naming it before any
    output is written, instead of after the outputs of the files before it."""
    for job in jobs:
        read_input(job.source, args, lazy=True)  # large raw TIFFs: the header and the bar rows


def to_output(pred: np.ndarray, bit_depth: int, *, float32: bool) -> np.ndarray:
    """Float prediction -> what is written: uint8/uint16 (rounded, clipped) or float32."""
    if float32:
        return (pred * np.float32(max_value(bit_depth))).astype(np.float32)
    return from_float(pred, bit_depth)


def predict_one(model: nn.Module, job: Job, args: argparse.Namespace, scale: float) -> tuple:
    """Read, super-resolve and write one image; returns (input shape, output shape)."""
    source = read_input(job.source, args, lazy=True)
    in_shape, bit_depth, calibration = source.image.shape, source.bit_depth, source.calibration
    bands = super_resolve_rows(
        model,
        source.image,
        scale=scale,
        tile=args.tile,
        overlap=args.overlap,
        device=args.device,
        tta=args.tta,
    )
    del source  # a read input is freed once upsampled (super_resolve_rows holds it till then)
    out_bands = (  # converted OUTPUT_ROWS at a time: to_output's float64 stays small
        to_output(
            finite_output(band[i : i + OUTPUT_ROWS], args.run), bit_depth, float32=args.float32
        )
        for band in bands
        for i in range(0, len(band), OUTPUT_ROWS)
    )
    shape = output_shape(in_shape, scale)
    dtype = np.float32 if args.float32 else np.uint8 if bit_depth == 8 else np.uint16
    write_calibrated(
        job.target, out_bands, shape, dtype, job.source, calibration, scale, args.overwrite
    )
    return in_shape, shape


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--bar-row / --no-bar and --page: how inputs are read (predict and refmaps)."""
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument(
        "--bar-row",
        type=int,
        default=None,
        help="cut the SEM data bar: keep rows [0, N) of each input (default: as data_prep "
        "build: the row the vendor metadata records; else 944 for 1280x1024 images; else a "
        "detected vendor data bar; else no cut)",
    )
    bar.add_argument(
        "--no-bar", action="store_true", help="cut no data bar, whatever the metadata says"
    )
    parser.add_argument(
        "--page", type=int, default=None, help="page of multi-page TIFF inputs, 0 = first"
    )


def check_input_arguments(args: argparse.Namespace) -> None:
    if args.bar_row is not None and args.bar_row < 1:
        raise UserError(f"--bar-row {args.bar_row}: must be a positive row number")
    if args.page is not None and args.page < 0:
        raise UserError(f"--page {args.page}: must be 0 (the first page) or more")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.predict",
        description=__doc__.split("\n")[0],
        epilog="Every input is read and every output path checked before the first "
        "prediction: one bad file (of a folder, too) stops the run with one line naming it, "
        "exit 2, and nothing is written.",
    )
    parser.add_argument("--run", required=True, help="run folder (model.safetensors, run.json)")
    parser.add_argument("--input", required=True, nargs="+", help="LR images or folders of them")
    parser.add_argument("--output", required=True, help="folder for the results")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile size (multiple of 16); 0 = whole image; default: whole unless large",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=AUTO_OVERLAP,
        help="tile overlap in output pixels (multiple of 16, default 128)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="d4: average the predictions of the image's 8 flips/rotations (8x the time)",
    )
    add_loading_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument(
        "--float32", action="store_true", help="write float32 TIFFs on the input's scale"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs that predict wrote (never inputs or other files)",
    )
    args = parser.parse_args(argv)
    check_input_arguments(args)
    if args.tile is not None and args.tile < 0:
        raise UserError(f"--tile {args.tile}: must be 0 (whole image) or a tile size")
    return args


def main(argv: list[str] | None = None) -> int:
    from aeatrain.run.final import load_run  # after argument parsing: --help stays fast

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    jobs = plan_jobs(
        collect_inputs(args.input),
        Path(args.output),
        float32=args.float32,
        overwrite=args.overwrite,
    )
    args.device = choose_device(args.device)
    if args.tile:
        check_tiling(args.tile, args.overlap)  # before any work
    check_inputs(jobs, args)
    model, run = load_run(args.run, weights=args.weights, device=args.device)
    log.info(
        "%s: %s, scale %g, %s weights, on %s",
        run.path,
        run.model_name,
        run.scale,
        run.weights_kind,
        args.device,
    )
    written = []  # recorded in the ledger last: a refused run records nothing
    try:
        for job in tqdm(jobs, desc="predict", unit="image", disable=len(jobs) < 2):
            before, after = predict_one(model, job, args, run.scale)
            written.append(job.target.name)
            log.info(
                "%s (%dx%d) -> %s (%dx%d)",
                job.source,
                before[1],
                before[0],
                job.target,
                after[1],
                after[0],
            )
    finally:  # what was written before a failure is ours: --overwrite may replace it
        if written:
            record_outputs(args.output, written, tool="aeatrain.predict")
    print(f"wrote {len(jobs)} image(s) to {args.output}")
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # CPU: 1.7-3x faster steps, see aeatrain/malloc.py
    run_cli(main)
