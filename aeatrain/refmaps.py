"""Heatmaps of the shared references (paper Fig. 6): ``python -m aeatrain.refmaps``.

    python -m aeatrain.refmaps --run RUN --input IMAGE --output DIR
        [--refs 0 5 12 | --top 4] [--registered] [--bar-row N | --no-bar] [--page N]
        [--weights auto|ema|raw] [--overwrite] [--device cpu|cuda]

An AEANet's attention block holds r learned shared references; for each chosen reference
the model's ``reference_maps`` gives the relevance of every pixel to it (the scaled
query-key score at the bottom of the U-Net, upsampled to the image;
aeatrain.protocol.heatmaps computes and draws the maps). The input is
prepared as for prediction: upsampled by the run's scale (``--registered``: it already is
in the HR frame, as DATA's registered LR images are). Without ``--refs`` the ``--top``
references whose relevance varies most across the image (largest spatial standard
deviation) are shown: a reference that scores every pixel alike tells nothing.

Writes to DIR, for an input ``name.ext``:

- ``name_ref<k>.png``: reference k's map (colour, min-max scaled) over the grey image;
- ``name_refmaps.png``: the input and every chosen map side by side, labelled;
- ``name_refmaps.tif``: the raw maps, float32, one page per chosen reference.

The input is read as predict reads it (data bar from the vendor metadata unless
``--bar-row``/``--no-bar``; ``--page``). An input with a recorded pixel size gives a
calibrated ``name_refmaps.tif`` (ImageJ unit nm, pixel size / scale; as is with
``--registered``); the PNG figures are pictures and carry none (a warning says so).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from aeatrain.errors import UserError, run_cli
from aeatrain.files.images import from_float, to_float, write_image
from aeatrain.files.outputs import check_replaceable_file, record_outputs
from aeatrain.malloc import keep_freed_memory
from aeatrain.protocol.heatmaps import (
    montage,
    most_varying_refs,
    num_refs,
    overlay,
    reference_maps,
)
from aeatrain.protocol.superres import (
    add_input_arguments,
    check_input_arguments,
    input_options,
    output_calibration,
    read_input,
    upsample,
)
from aeatrain.run.options import add_loading_arguments, choose_device

log = logging.getLogger(__name__)


def output_paths(source: Path, output: Path, refs: list[int]) -> dict[str, Path]:
    stem = source.stem
    paths = {f"ref{k}": output / f"{stem}_ref{k}.png" for k in refs}
    paths["montage"] = output / f"{stem}_refmaps.png"
    paths["raw"] = output / f"{stem}_refmaps.tif"
    return paths


def check_outputs(source: Path, paths: dict[str, Path], overwrite: bool) -> None:
    """Before any work: no output may be the input, none may exist without --overwrite,
    and --overwrite replaces only figures aeatrain wrote (aeatrain.files.outputs' ledger)."""
    for path in paths.values():
        if path.resolve() == source.resolve():
            raise UserError(f"{path}: output path equals the input; choose another --output")
        check_replaceable_file(path, overwrite=overwrite)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.refmaps", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run", required=True, help="an aeanet run folder")
    parser.add_argument("--input", required=True, help="an LR image (or registered, see below)")
    parser.add_argument("--output", required=True, help="folder for the figures")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--refs", type=int, nargs="+", help="reference indices to show")
    choose.add_argument(
        "--top", type=int, default=4, help="show the N most varying references (default 4)"
    )
    parser.add_argument(
        "--registered", action="store_true", help="input is in the HR frame already"
    )
    add_input_arguments(parser)
    add_loading_arguments(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing figures refmaps wrote"
    )
    args = parser.parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top {args.top}: must be at least 1")
    check_input_arguments(args)
    return args


def main(argv: list[str] | None = None) -> int:
    from aeatrain.run.final import load_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    source, output = Path(args.input), Path(args.output)
    if source.is_dir():
        raise UserError(
            f"{source}: --input is a folder; refmaps maps one image file (--input IMAGE), "
            "predict takes folders"
        )
    source_image = read_input(source, **input_options(args))
    model, run = load_run(args.run, weights=args.weights, device=choose_device(args.device))
    count = num_refs(model, run.path)
    bad = [k for k in args.refs or [] if not 0 <= k < count]
    if bad:
        raise UserError(f"--refs {bad[0]}: this model has references 0..{count - 1}")
    prepared = source_image.image
    if not args.registered:
        prepared = upsample(prepared, run.scale)
    floats = to_float(prepared, source_image.bit_depth)
    refs = sorted(set(args.refs)) if args.refs else None
    check_outputs(source, output_paths(source, output, refs or []), args.overwrite)
    if refs is None:
        refs = most_varying_refs(model, floats, count, min(args.top, count))
        check_outputs(source, output_paths(source, output, refs), args.overwrite)
    maps = reference_maps(model, floats, refs)  # (len(refs), H, W)
    grey = from_float(floats, 8)
    paths = output_paths(source, output, refs)
    record_outputs(output, [path.name for path in paths.values()], tool="aeatrain.refmaps")
    for k, values in zip(refs, maps):
        write_image(paths[f"ref{k}"], overlay(grey, values), overwrite=args.overwrite)
    write_image(paths["montage"], montage(grey, maps, refs), overwrite=args.overwrite)
    scale = 1.0 if args.registered else run.scale
    pixel_nm, info = output_calibration(source, source_image.calibration, scale)
    write_image(
        paths["raw"],
        maps.astype(np.float32),
        overwrite=args.overwrite,
        pixel_size_nm=pixel_nm,
        info=info,
    )
    if pixel_nm is not None:
        log.warning(
            "%s: the PNG figures carry no calibration; %s does (%.4g nm per pixel)",
            source,
            paths["raw"].name,
            pixel_nm,
        )
    print(f"references {refs}: wrote {len(paths)} files to {output}")
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # CPU: 1.7-3x faster steps, see aeatrain/malloc.py
    run_cli(main)
