"""Super-resolve new LR images with a trained run: ``python -m aeatrain.predict``.

    python -m aeatrain.predict --run RUN --input IMAGE_OR_FOLDER [...] --output DIR
        [--tile S --overlap O] [--tta none|d4] [--weights auto|ema|raw]
        [--bar-row N | --no-bar] [--page N] [--float32] [--overwrite] [--device cpu|cuda]

Each input (any size, 8 or 16 bit, BMP/PNG/TIFF; a folder means its images) is
upsampled by the run's scale with bicubic interpolation (as the registered LR the model
was trained on), run through the model and written to ``DIR/<input name>`` with the
input's bit depth and format (``--float32``: a float32 TIFF on the input's scale, neither
rounded nor clipped). Large images are predicted in tiles blended without seams
(aeatrain.protocol.inference.tiled_rows) and written as the tiles finish their rows, so
memory is set by the tile size and the image width, not the image's size. ``--tta d4``
averages the predictions of the image's 8 flips/rotations (the D4 self-ensemble, 8x the
time). The library of this command is aeatrain.protocol.superres.

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
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from aeatrain.errors import UserError, run_cli
from aeatrain.files.images import IMAGE_SUFFIXES
from aeatrain.files.outputs import check_replaceable_file, record_outputs
from aeatrain.malloc import keep_freed_memory
from aeatrain.protocol.inference import TTA_MODES, check_tiling
from aeatrain.protocol.superres import (
    AUTO_OVERLAP,
    add_input_arguments,
    check_input_arguments,
    input_options,
    output_shape,
    read_input,
    super_resolve_rows,
    to_output,
    write_calibrated,
)
from aeatrain.run.final import finite_output
from aeatrain.run.options import add_loading_arguments, choose_device

log = logging.getLogger(__name__)

OUTPUT_ROWS = 256  # rows of the prediction converted to the output type at a time


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
        # lazy: of a large raw TIFF, only the header and the data-bar rows are read
        read_input(job.source, **input_options(args), lazy=True)


def predict_one(model: nn.Module, job: Job, args: argparse.Namespace, scale: float) -> tuple:
    """Read, super-resolve and write one image; returns (input shape, output shape)."""
    source = read_input(job.source, **input_options(args), lazy=True)
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
