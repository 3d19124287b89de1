"""Heatmaps of the shared references (paper Fig. 6): ``python -m aeatrain.refmaps``.

    python -m aeatrain.refmaps --run RUN --input IMAGE --output DIR
        [--refs 0 5 12 | --top 4] [--registered] [--bar-row N | --no-bar] [--page N]
        [--weights auto|ema|raw] [--overwrite] [--device cpu|cuda]

An AEANet's attention block holds r learned shared references; for each chosen reference
the model's ``reference_maps`` gives the relevance of every pixel to it (the scaled
query-key score at the bottom of the U-Net, upsampled to the image). The input is
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

import cv2
import numpy as np
import torch
from torch import nn

from aeatrain.errors import UserError, run_cli
from aeatrain.imageio import from_float, to_float, write_image
from aeatrain.inference import choose_device, eval_mode, pad_to_multiple, padding_multiple
from aeatrain.malloc import keep_freed_memory
from aeatrain.models import shared_references
from aeatrain.outputs import check_replaceable_file, record_outputs
from aeatrain.predict import (
    add_input_arguments,
    check_input_arguments,
    output_calibration,
    read_input,
    upsample,
)
from aeatrain.runs import add_loading_arguments

log = logging.getLogger(__name__)

PANEL_WIDTH = 512  # montage panels are scaled to this width at most
REF_CHUNK = 16  # references per forward pass when ranking all of them


def num_refs(model: nn.Module, run_path: Path) -> int:
    """The model's number of shared references; UserError for models without any."""
    count = shared_references(model)
    if not count or not hasattr(model, "reference_maps"):
        raise UserError(
            f"{run_path}: this model has no shared references; reference maps need an "
            f"aeanet run with num_refs > 0"
        )
    return int(count)


def reference_maps(model: nn.Module, image: np.ndarray, refs: list[int]) -> np.ndarray:
    """Maps of ``refs`` for a float (H, W) image: float32 (len(refs), H, W).

    The image is reflect-padded to a multiple of 16 like a prediction and the maps are
    cropped back, so borders see the context whole-image prediction gives them. Runs in
    eval mode without gradients and restores the model's mode (training's pictures call
    it); the input takes the weights' dtype (DeepSpeed keeps 16-bit module weights).
    """
    h, w = image.shape
    parameter = next(model.parameters())
    padded = pad_to_multiple(image, padding_multiple(model))  # (Hp, Wp)
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    x = x[None, None].to(device=parameter.device, dtype=parameter.dtype)  # (1, 1, Hp, Wp)
    with eval_mode(model):
        maps = model.reference_maps(x, refs)  # (1, len(refs), Hp, Wp)
    return maps[0, :, :h, :w].float().cpu().numpy()


def most_varying_refs(model: nn.Module, image: np.ndarray, count: int, top: int) -> list[int]:
    """The ``top`` references with the largest spatial standard deviation of relevance.

    Maps are computed ``REF_CHUNK`` references at a time, so memory stays at 16 maps.
    """
    spread = []
    for start in range(0, count, REF_CHUNK):
        chunk = list(range(start, min(count, start + REF_CHUNK)))
        maps = reference_maps(model, image, chunk)  # (len(chunk), H, W)
        spread.extend(maps.reshape(len(chunk), -1).std(axis=1).tolist())
    order = np.argsort(spread)[::-1][:top]
    return sorted(int(i) for i in order)


def heatmap(values: np.ndarray) -> np.ndarray:
    """Float (H, W) -> BGR uint8 colour map (OpenCV's TURBO), min-max scaled: the
    minimum is TURBO's dark blue, the maximum its dark red; a constant map is all
    minimum. The one heatmap renderer (training's TensorBoard pictures use it too)."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return cv2.applyColorMap(from_float(scaled, 8), cv2.COLORMAP_TURBO)


def overlay(grey: np.ndarray, values: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The heatmap of ``values`` blended over an 8-bit grey image; BGR uint8."""
    background = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(heatmap(values), alpha, background, 1.0 - alpha, 0.0)


def _panel(image: np.ndarray, label: str) -> np.ndarray:
    """Scale a BGR panel to at most PANEL_WIDTH wide and write its label in the corner."""
    h, w = image.shape[:2]
    if w > PANEL_WIDTH:
        size = (PANEL_WIDTH, max(1, round(h * PANEL_WIDTH / w)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    image = image.copy()
    cv2.putText(image, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    return image


def montage(grey: np.ndarray, maps: np.ndarray, refs: list[int]) -> np.ndarray:
    """Input and each map side by side (BGR uint8), 4 px white gaps."""
    panels = [_panel(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), "input")]
    panels += [_panel(heatmap(m), f"ref {k}") for k, m in zip(refs, maps)]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def output_paths(source: Path, output: Path, refs: list[int]) -> dict[str, Path]:
    stem = source.stem
    paths = {f"ref{k}": output / f"{stem}_ref{k}.png" for k in refs}
    paths["montage"] = output / f"{stem}_refmaps.png"
    paths["raw"] = output / f"{stem}_refmaps.tif"
    return paths


def check_outputs(source: Path, paths: dict[str, Path], overwrite: bool) -> None:
    """Before any work: no output may be the input, none may exist without --overwrite,
    and --overwrite replaces only figures aeatrain wrote (aeatrain.outputs' ledger)."""
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
    from aeatrain.runs import load_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    source, output = Path(args.input), Path(args.output)
    if source.is_dir():
        raise UserError(
            f"{source}: --input is a folder; refmaps maps one image file (--input IMAGE), "
            "predict takes folders"
        )
    source_image = read_input(source, args)
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
