"""Reading and writing microscopy images: 8/16-bit greyscale BMP, PNG and TIFF.

The one place that touches image files. Arrays are ``(H, W)`` ``uint8`` or ``uint16``;
the bit depth travels with them (a large TIFF may also be read a band of rows at a time:
aeatrain/files/rows.py). Every write is atomic (aeatrain/files/atomic.py: a
temporary file beside the target, renamed when complete) and refuses to replace an
existing file unless asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

from aeatrain.errors import UserError
from aeatrain.files.atomic import atomic_path, atomic_write_bytes

log = logging.getLogger(__name__)
# OpenCV's own log lines ("[ERROR:0@0.1] global loadsave.cpp ...") would come before, and
# repeat, the one-line ImageError that a failed read raises
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_SUFFIXES = (".bmp", ".png", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")
_MAX_SIDE = 30_000
_MAX_PIXELS = _MAX_SIDE * _MAX_SIDE
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_LIMIT = 2**32 - 2**25  # bytes of pixels beyond which a TIFF must be a BigTIFF
_STRIP_ROWS = 64  # rows per strip of a streamed TIFF


class ImageError(UserError):
    """An image file that cannot be used; the message names the file."""


def bit_depth_of(array: np.ndarray) -> int:
    """8 for ``uint8``, 16 for ``uint16``; anything else is not an SEM image we read."""
    if array.dtype == np.uint8:
        return 8
    if array.dtype == np.uint16:
        return 16
    raise ValueError(f"unsupported pixel type {array.dtype}; expected uint8 or uint16")


def max_value(bit_depth: int) -> int:
    """Largest pixel value at a bit depth: 255 or 65535."""
    return (1 << bit_depth) - 1


def read_image(path: str | os.PathLike, *, page: int | None = None) -> tuple[np.ndarray, int]:
    """Read a greyscale SEM image; returns ``(array (H, W) uint8|uint16, bit_depth)``.

    The content decides how the file is read, not its name (a TIFF named .png is still a
    TIFF); JPEG content, lossy whatever its name, is read with a warning naming the file.
    TIFFs: any compression tifffile + imagecodecs decode (LZW, PackBits, deflate, zstd,
    JPEG) or none (no Compression tag); a grey palette becomes grey (up to 1 % of the
    pixels in colour, burnt-in markers, by their luma, with a warning), a colour one is
    refused; a multi-page file is refused unless ``page`` chooses one (0 is the first;
    single-page files ignore it). Colour images (SEM software often saves grey as RGB) are converted
    to grey with a warning; a constant alpha channel is dropped, a varying one refused.
    Raises :class:`ImageError` naming the file when it is missing, not an image,
    truncated, or of an unsupported pixel type.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if not os.access(path, os.R_OK):  # else a PermissionError traceback, or mistaken for
        raise ImageError(f"{path}: cannot read it (permission denied)")  # a write error
    kind = content_kind(path)
    if kind == "jpeg":
        log.warning("%s: JPEG content (lossy compression) under the name %s", path, path.name)
    if kind == "tiff":
        array = _read_tiff(path, page)
    else:
        array = _read_with_opencv(path)
    array = _to_grey(array, path)
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: pixel type {array.dtype} is not supported (8 or 16 bit integer)")
    if min(array.shape) < 1:
        raise ImageError(f"{path}: image is empty ({array.shape[1]}x{array.shape[0]})")
    return np.ascontiguousarray(array), bit_depth_of(array)


def content_kind(path: Path) -> str:
    """The file's kind from its first bytes (its magic number): tiff, jpeg or other."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return "other"


# always-lossy TIFF compressions (WebP, JPEG XR/XL, JPEG 2000 and LERC can be lossless)
_LOSSY_TIFF = (
    "JPEG",
    "OJPEG",
    "JPEG_99",
    "ALT_JPEG",
    "JPEG_LOSSY",
    "JPEG_2000_LOSSY",
    "JPEGXR_NDPI",
)


class _HeldRecords(logging.Filter):
    """A logger filter that keeps the records instead of letting them through."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def tifffile_complaints_held(path: Path) -> Iterator[None]:
    """tifffile logs ERROR lines about a damaged file before it fails; they would come
    before, and say less than, the one-line ImageError. Held while reading: dropped when
    the read fails, logged once as a warning naming the file when it succeeds."""
    logger, held = logging.getLogger("tifffile"), _HeldRecords()
    logger.addFilter(held)
    try:
        yield
    finally:
        logger.removeFilter(held)
    if held.records:
        complaints = "; ".join(record.getMessage() for record in held.records)
        log.warning("%s: read, but tifffile found problems: %s", path, complaints)


def _read_tiff(path: Path, page: int | None) -> np.ndarray:
    try:
        with tifffile_complaints_held(path), tifffile.TiffFile(path) as tif:
            chosen = tif.pages[tiff_page(path, len(tif.pages), page)]
            check_pixels(path, (chosen.imagewidth, chosen.imagelength))
            array = chosen.asarray()
            compression = _compression_name(chosen.compression)
            if compression in _LOSSY_TIFF:
                log.warning(
                    "%s: %s-compressed TIFF: lossy content under a lossless name",
                    path,
                    compression,
                )
            if chosen.photometric == tifffile.PHOTOMETRIC.PALETTE:
                return _palette_to_grey(array, chosen.colormap, path)
            axes = chosen.axes
    except ImageError:
        raise
    except Exception as err:  # tifffile raises many types for damaged files
        raise ImageError(f"{path}: not a readable TIFF image ({err})") from None
    if array.ndim == 3 and axes.startswith("S"):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
    return array


def _compression_name(value: int) -> str:
    """The name of a TIFF compression: tifffile gives a plain int where the file has no
    Compression tag (TIFF 6.0's default, 1 = none; ImageJ 1.51 writes such files) or a
    code it does not name."""
    try:
        return tifffile.COMPRESSION(value).name
    except ValueError:
        return str(value)


def tiff_page(path: Path, count: int, page: int | None) -> int:
    """Index of the page to read; refuses to guess among several."""
    if count == 1:
        return 0
    if count == 0:  # the signature, then no directory tifffile can read
        raise ImageError(f"{path}: not a readable TIFF image (no image directory after its header)")
    if page is None:
        raise ImageError(
            f"{path}: {count} pages; choose one with --page N (0 to {count - 1}), "
            "none is picked silently"
        )
    if not 0 <= page < count:
        raise ImageError(f"{path}: --page {page}, but the file has pages 0 to {count - 1}")
    return page


PALETTE_COLOUR_LIMIT = 0.01  # a palette image with more coloured pixels than this is refused


def _palette_to_grey(indices: np.ndarray, colormap: np.ndarray, path: Path) -> np.ndarray:
    """Apply a TIFF colour map (3, 2**bits uint16) to its indices, as grey.

    Entries whose red, green and blue lie within 1/255 of the full scale of each other
    are grey and give their green value. SEM software burns coloured markers, cursors
    and scale bars into grey palette images: up to 1 % of the pixels in colour become
    grey by their ITU-R BT.601 luma, with a warning naming the file and their number;
    more colour than that is a colour image and refused.
    """
    if colormap is None:
        raise ImageError(f"{path}: palette TIFF without a colour map")
    entries = colormap.astype(np.int64)  # (3, entries)
    coloured = (entries.max(axis=0) - entries.min(axis=0)) > 257  # (entries,)
    coloured_pixels = int(np.count_nonzero(coloured[indices]))
    if coloured_pixels > PALETTE_COLOUR_LIMIT * indices.size:
        raise ImageError(
            f"{path}: palette (indexed colour) TIFF with {coloured_pixels} of {indices.size} "
            f"pixels in colour ({coloured_pixels / indices.size:.1%}, more than "
            f"{PALETTE_COLOUR_LIMIT:.0%}); convert it to grey"
        )
    levels = entries[1].astype(np.float64)  # (entries,) 0..65535
    if coloured_pixels:
        log.warning(
            "%s: palette image with %d coloured pixels (markers?) of %d: made grey by luma",
            path,
            coloured_pixels,
            indices.size,
        )
        luma = np.array([0.299, 0.587, 0.114]) @ entries  # (entries,)
        levels = np.where(coloured, luma, levels)
    grey = levels[indices]  # (H, W) 0..65535
    if colormap.shape[1] <= 256:  # an 8-bit palette: its grey levels are 8-bit
        return np.rint(grey / 257.0).astype(np.uint8)
    return np.rint(grey).astype(np.uint16)


def _read_with_opencv(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: file is empty")
    _check_before_decoding(path, memoryview(data))
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # e.g. a header beyond OpenCV's pixel limit
        raise ImageError(f"{path}: not a readable image (OpenCV: {opencv_message(err)})") from None
    if array is None:
        raise ImageError(f"{path}: not a readable image (unknown format, or truncated)")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = cv2.cvtColor(
            array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
        )
    return array


def opencv_message(err: cv2.error) -> str:
    """OpenCV's own sentence of a ``cv2.error``, whole, without its source file and line."""
    text = getattr(err, "err", None) or str(err).strip().splitlines()[-1]
    return " ".join(text.split())


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of an image from its header (a TIFF's first page), without
    decoding it; None when the file is missing or its header is not one of ours."""
    path = Path(path)
    try:
        if content_kind(path) == "tiff":
            with tifffile.TiffFile(path) as tif:
                return tif.pages.first.imagewidth, tif.pages.first.imagelength
        with open(path, "rb") as handle:
            return _declared_size(memoryview(handle.read(32)))
    except Exception:  # unreadable or damaged: read_image names the problem
        return None


def _check_before_decoding(path: Path, data: memoryview) -> None:
    """Refuse what OpenCV would refuse noisily: a header claiming an absurd size, a
    truncated or damaged PNG (libpng prints its own line to stderr before failing)."""
    size = _declared_size(data)
    if size is not None:
        check_pixels(path, size)
    problem = _png_problem(data) if data[:8] == _PNG_SIGNATURE else None
    if problem:
        raise ImageError(f"{path}: not a readable image (PNG {problem})")


def check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse a header's (width, height) beyond 30000 x 30000 before memory is taken."""
    if size[0] * size[1] > _MAX_PIXELS:
        raise ImageError(
            f"{path}: header claims {size[0]} x {size[1]} pixels, beyond the "
            f"{_MAX_SIDE} x {_MAX_SIDE} this reader accepts (a damaged file?)"
        )


def _declared_size(data: memoryview) -> tuple[int, int] | None:
    """(width, height) from a PNG or BMP header; None for other formats or no header."""
    if data[:8] == _PNG_SIGNATURE and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])  # height < 0: top-down rows
        return abs(width), abs(height)
    return None


def _png_problem(data: memoryview) -> str | None:
    """Why a PNG's chunks are unusable (truncated, checksum wrong), or None."""
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if not kind.isalpha():
            return "damaged: no chunk where one should start"
        end = position + 12 + length  # length, type, data, CRC
        if end > len(data):
            return f"truncated in its {kind.decode('latin-1')} chunk"
        stored = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[position + 4 : end - 4]) != stored:
            return f"damaged: checksum of its {kind.decode('latin-1')} chunk is wrong"
        if kind == b"IEND":
            return None
        position = end
    return "truncated: no IEND chunk"


def _drop_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 2|4) -> (H, W, 1|3): a constant alpha (opaque, or an unused zero channel
    as some BMP writers leave) carries nothing; a varying one would be lost, so refused."""
    alpha = array[..., -1]
    if alpha.min() != alpha.max():
        raise ImageError(
            f"{path}: image with transparency (alpha varies from {alpha.min()} to "
            f"{alpha.max()}); flatten it to an opaque grey image first"
        )
    return array[..., :-1]


def _to_grey(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = _drop_alpha(array, path)
    if array.ndim == 3 and array.shape[2] == 3:
        rgb = array
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            log.warning("%s: RGB image with equal channels, using one channel as grey", path)
            return np.ascontiguousarray(rgb[..., 0])
        log.warning("%s: colour image converted to grey (ITU-R BT.601 luma)", path)
        weights = np.array([0.299, 0.587, 0.114])
        grey = rgb.astype(np.float64) @ weights
        return np.clip(np.rint(grey), 0, np.iinfo(array.dtype).max).astype(array.dtype)
    if array.ndim == 3 and array.shape[2] == 1:
        return array[..., 0]
    raise ImageError(f"{path}: unsupported image layout {array.shape}; expected a greyscale image")


def unit_scale(bit_depth: int) -> np.float32:
    """The float32 factor that maps 0..2^bits - 1 onto [0, 1]: float32(1 / 255) or
    float32(1 / 65535), the ``scale_linear`` gain an exported package declares."""
    return np.float32(1.0 / max_value(bit_depth))


def to_float(
    array: np.ndarray, bit_depth: int | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Integer image -> float32 in [0, 1]: each value (exact in float32) times
    :func:`unit_scale`, rounded once. ``bit_depth`` None: the array's own (uint8: 8).

    The ONE integer -> [0, 1] conversion: training's batches, validation, evaluate,
    predict, refmaps and export call it, so a pixel is the same float32 input everywhere.
    A product with the rounded reciprocal, not a division: it is what the exported
    package's ``scale_linear`` preprocessing computes (the two differ by one ulp for 126
    of the 256 8-bit values). ``out``: a float32 array (or view) of the same shape to
    fill, so a batch is converted into its buffer without a temporary.
    """
    depth = bit_depth if bit_depth is not None else bit_depth_of(array)
    return np.multiply(array, unit_scale(depth), out=out, dtype=np.float32)


def from_float(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float image in [0, 1] -> ``uint8``/``uint16``, clipped and rounded."""
    top = max_value(bit_depth)
    scaled = np.clip(np.rint(np.asarray(image, dtype=np.float64) * top), 0, top)
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def encode_image(
    array: np.ndarray,
    suffix: str,
    *,
    pixel_size_nm: float | None = None,
    info: str | None = None,
    extratags: list | None = None,
    compression: str | None = None,
) -> bytes:
    """Encode an (H, W) uint8/uint16 or float32 (TIFF only) array as the format of ``suffix``.

    TIFF only: ``pixel_size_nm`` writes an ImageJ calibration (unit ``nm``, X/Y
    resolution = 1 / pixel size), so Fiji opens the file calibrated; ``info`` goes into
    ImageJ's Info property (Image > Show Info); ``extratags`` are tifffile extra tags
    (synthetic vendor files); ``compression`` a tifffile compression ("lzw"). BMP and
    PNG hold no calibration: callers say so.
    """
    suffix = suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        import io

        buffer = io.BytesIO()
        options = _tiff_options(pixel_size_nm, info, extratags, compression)
        tifffile.imwrite(buffer, array, **options)
        return buffer.getvalue()
    if array.dtype == np.float32 or array.dtype == np.float64:
        raise UserError(f"float images can only be written as TIFF, not {suffix}")
    if suffix == ".bmp" and array.dtype != np.uint8:
        raise UserError("BMP holds 8-bit images only; write 16-bit results as PNG or TIFF")
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(
            f"unsupported image format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    ok, buffer = cv2.imencode(suffix, array)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {array.dtype} image as {suffix}")
    return buffer.tobytes()


def _tiff_options(
    pixel_size_nm: float | None,
    info: str | None,
    extratags: list | None = None,
    compression: str | None = None,
) -> dict:
    """tifffile.imwrite's keywords for a greyscale TIFF, ImageJ-calibrated when
    ``pixel_size_nm`` is given (see :func:`encode_image`)."""
    options: dict = {
        "photometric": "minisblack",
        "extratags": extratags or [],
        "compression": compression,
    }
    if pixel_size_nm is not None:
        per_nm = 1.0 / pixel_size_nm
        metadata = {"unit": "nm"} | ({"Info": info} if info else {})
        options |= {"imagej": True, "resolution": (per_nm, per_nm), "metadata": metadata}
    return options


def write_image_rows(
    target: str | os.PathLike,
    bands: Iterable[np.ndarray],
    shape: tuple[int, int],
    dtype: np.dtype,
    *,
    overwrite: bool = False,
    pixel_size_nm: float | None = None,
    info: str | None = None,
) -> None:
    """Write an (H, W) image that arrives as row bands (top to bottom, ``shape`` in all,
    ``dtype`` each), atomically, like :func:`write_image`.

    A TIFF is written strip by strip as the bands come, so the whole image never exists
    in memory; beyond 4 GiB it is a BigTIFF, which ImageJ's format cannot be, so such a
    file carries no calibration (a warning says so). BMP and PNG are put together and
    encoded whole.
    """
    target = Path(target)
    if target.suffix.lower() not in _TIFF_SUFFIXES:
        whole = np.concatenate(list(bands))
        write_image(target, whole, overwrite=overwrite, pixel_size_nm=pixel_size_nm, info=info)
        return
    options = _tiff_options(pixel_size_nm, info)
    dtype = np.dtype(dtype)
    if shape[0] * shape[1] * dtype.itemsize > _TIFF_LIMIT:
        if "imagej" in options:
            log.warning("%s: over 4 GiB, written as BigTIFF without its calibration", target)
        options = _tiff_options(None, None) | {"bigtiff": True}
    # never exactly two strips: tifffile stores two small strips' byte counts as two SHORTs
    # inside the IFD entry, which ImageJ 1.53t misreads (it cannot open such 16- and 32-bit
    # images), so up to two strips' rows are one strip
    strip_rows = shape[0] if shape[0] <= 2 * _STRIP_ROWS else _STRIP_ROWS
    rows = _strips(bands, shape, dtype, strip_rows)
    with atomic_path(target, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, rows, shape=shape, dtype=dtype, rowsperstrip=strip_rows, **options)


def _strips(
    bands: Iterable[np.ndarray], shape: tuple[int, int], dtype: np.dtype, rows: int
) -> Iterator[np.ndarray]:
    """Re-cut row bands of any height into strips of ``rows`` rows (the last may be less);
    a band of the wrong width or type, or the wrong number of rows in all, is a bug."""
    carry = np.zeros((0, shape[1]), dtype=dtype)  # rows short of a strip, from the last band
    total = 0
    for band in bands:
        if band.ndim != 2 or band.shape[1] != shape[1] or band.dtype != dtype:
            raise ValueError(f"band {band.shape} {band.dtype} does not fit {shape} {dtype}")
        total += len(band)
        band = np.concatenate([carry, band]) if len(carry) else band
        whole = len(band) - len(band) % rows
        for start in range(0, whole, rows):
            yield band[start : start + rows]
        carry = band[whole:]
    if total != shape[0]:
        raise ValueError(f"bands hold {total} rows, the image {shape[0]}")
    if len(carry):
        yield carry


def write_image(
    target: str | os.PathLike,
    array: np.ndarray,
    *,
    overwrite: bool = False,
    pixel_size_nm: float | None = None,
    info: str | None = None,
) -> None:
    """Write an (H, W) image atomically in the format named by the target's suffix
    (``pixel_size_nm``, ``info``: a calibrated TIFF, see :func:`encode_image`)."""
    target = Path(target)
    data = encode_image(array, target.suffix, pixel_size_nm=pixel_size_nm, info=info)
    atomic_write_bytes(target, data, overwrite=overwrite)
