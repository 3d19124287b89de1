"""Super-resolving new LR images, predict's library (``python -m aeatrain.predict`` is the
command): an input read and its data bar cut (:func:`read_input`), upsampled by the run's
scale as the registered LR the model was trained on (:func:`upsample`), predicted whole or
in seamless tiles with the protocol's inference (:func:`super_resolve_rows`), and written
with the input's bit depth and calibration (:func:`write_calibrated`). refmaps reads and
upsamples its input the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from aeatrain.errors import UserError
from aeatrain.files.images import from_float, max_value, read_image, to_float, write_image_rows
from aeatrain.files.microscope import Calibration, cut_data_bar, read_calibration
from aeatrain.files.rows import LazyRows, open_image_rows
from aeatrain.protocol.inference import predict_full, predict_tiled, self_ensemble, tiled_rows

log = logging.getLogger(__name__)

AUTO_TILE_PIXELS = 2_500_000  # above this (upsampled) size, tile: ~2 GB peak for the U-Net
AUTO_TILE, AUTO_OVERLAP = 1024, 128
LAZY_INPUT_PIXELS = 4 * 2**20  # inputs this large (8 MiB at 16 bits) are read a band at a time


def upsample(image: np.ndarray | LazyRows, scale: float) -> np.ndarray | LazyRows:
    """Bicubic upsampling of an integer (H, W) image by ``scale`` (OpenCV INTER_CUBIC).

    Done on the integer image, like data_prep's bicubic warp, so the model sees the
    same kind of input (saturated, rounded) it was trained on. Fields of view align at
    the outer pixel edges. The output is ``round(W * scale) x round(H * scale)``. A
    :class:`~aeatrain.files.rows.LazyRows` input stays lazy at a whole-number scale
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


def read_input(
    path: Path,
    *,
    page: int | None = None,
    bar_row: int | None = None,
    no_bar: bool = False,
    lazy: bool = False,
) -> InputImage:
    """Read an input (``page`` of a multi-page TIFF), cut its data bar as data_prep build
    does (aeatrain.files.microscope.cut_data_bar: ``no_bar``, ``bar_row``, the vendor's row,
    the public layout's, a detected bar, or none; a cut is logged naming the file).

    ``lazy``: an input large enough to be tiled and stored as raw strips comes as a
    :class:`~aeatrain.files.rows.LazyRows`, read a band at a time as the tiles need it
    (:func:`~aeatrain.files.rows.open_image_rows`); the same pixels as a whole read.
    """
    if lazy:
        image, bit_depth = open_image_rows(path, page=page, min_pixels=LAZY_INPUT_PIXELS)
    else:
        image, bit_depth = read_image(path, page=page)
    calibration = read_calibration(path)
    image, _ = cut_data_bar(image, path, calibration, bar_row=bar_row, no_bar=no_bar)
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


def to_output(pred: np.ndarray, bit_depth: int, *, float32: bool) -> np.ndarray:
    """Float prediction -> what is written: uint8/uint16 (rounded, clipped) or float32."""
    if float32:
        return (pred * np.float32(max_value(bit_depth))).astype(np.float32)
    return from_float(pred, bit_depth)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bar-row``/``--no-bar`` and ``--page``: :func:`read_input`'s options on the command
    line (predict and refmaps); pass them on with :func:`input_options`."""
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


def input_options(args: argparse.Namespace) -> dict:
    """:func:`read_input`'s keywords from :func:`add_input_arguments`' options."""
    return {"page": args.page, "bar_row": args.bar_row, "no_bar": args.no_bar}
