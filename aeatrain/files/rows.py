"""Large images a band of rows at a time: :class:`LazyRows`, an (H, W) image whose rows
are produced only when asked, and :func:`open_image_rows`, which opens a raw striped TIFF
as one (:class:`TiffRows`, read with ``os.pread``) and reads every other file whole
(aeatrain/files/images.py). predict tiles such an input without ever holding it."""

from __future__ import annotations

import abc
import copy
import os
from pathlib import Path

import numpy as np
import tifffile

from aeatrain.files.images import (
    ImageError,
    check_pixels,
    content_kind,
    read_image,
    tiff_page,
    tifffile_complaints_held,
)


class LazyRows(abc.ABC):
    """An (H, W) integer image whose rows are produced only when asked, so a large one is
    never held whole: ``x[a:b]`` is another LazyRows of those rows (nothing read),
    ``x[i]``, ``x[a:b, c:d]`` and ``np.asarray(x)`` read (or compute) the rows they need.
    Subclasses give ``shape``, ``dtype`` and ``_rows(r0, r1)``."""

    def __init__(self, shape: tuple[int, int], dtype: np.dtype, first: int = 0) -> None:
        self.shape, self.dtype, self._first = shape, np.dtype(dtype), first

    ndim = 2

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    @abc.abstractmethod
    def _rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``[r0, r1)`` of the whole image (not of a view), as an array."""

    def __getitem__(self, key):
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice) and rows.step in (None, 1) and not isinstance(key, tuple):
            start, stop, _ = rows.indices(self.shape[0])
            view = copy.copy(self)  # the same source, fewer rows
            view.shape, view._first = (max(0, stop - start), self.shape[1]), self._first + start
            return view
        if isinstance(rows, (int, np.integer)):
            index = range(self.shape[0])[rows]  # negative indices, IndexError past the end
            return self._rows(self._first + index, self._first + index + 1)[0, cols]
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("LazyRows: rows are read as a contiguous band")
        return self._rows(self._first + start, self._first + max(start, stop))[:, cols]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._rows(self._first, self._first + self.shape[0])
        return array if dtype is None else array.astype(dtype, copy=False)


class TiffRows(LazyRows):
    """The rows of one uncompressed, striped, single-sample 8/16-bit TIFF page, read from
    the file with ``os.pread`` as they are asked for (:func:`open_image_rows`)."""

    def __init__(self, path: Path, page: tifffile.TiffPage, byteorder: str) -> None:
        super().__init__(page.shape, np.dtype(page.dtype))
        self.path, self._stored = path, np.dtype(page.dtype).newbyteorder(byteorder)
        self._strip_rows = min(page.rowsperstrip or page.imagelength, page.imagelength)
        self._offsets = tuple(page.dataoffsets)

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        width, itemsize = self.shape[1], self.dtype.itemsize
        out = np.empty((r1 - r0, width), dtype=self.dtype)
        with open(self.path, "rb") as handle:
            row = r0
            while row < r1:
                strip, within = divmod(row, self._strip_rows)
                count = min(r1, (strip + 1) * self._strip_rows) - row
                offset = self._offsets[strip] + within * width * itemsize
                data = os.pread(handle.fileno(), count * width * itemsize, offset)
                if len(data) != count * width * itemsize:
                    raise ImageError(f"{self.path}: not a readable TIFF image (truncated)")
                chunk = np.frombuffer(data, dtype=self._stored).reshape(count, width)
                out[row - r0 : row - r0 + count] = chunk
                row += count
        return out


def open_image_rows(
    path: str | os.PathLike, *, page: int | None = None, min_pixels: int = 0
) -> tuple[np.ndarray | LazyRows, int]:
    """:func:`read_image`, or for a TIFF of at least ``min_pixels`` pixels that can be
    read a band at a time (uncompressed, in strips, one 8/16-bit sample: what SEMs and
    tifffile write) a :class:`TiffRows` whose rows are read as they are used: a
    16-bit 8192 x 8192 input is then never held whole (128 MiB). The same pixels either
    way; every other file is read whole."""
    path = Path(path)
    if path.is_file() and os.access(path, os.R_OK) and content_kind(path) == "tiff":
        rows = _tiff_rows(path, page, min_pixels)
        if rows is not None:
            return rows, 8 * rows.dtype.itemsize
    return read_image(path, page=page)


def _tiff_rows(path: Path, page: int | None, min_pixels: int) -> TiffRows | None:
    """A TiffRows of the chosen page, or None where it must be read whole."""
    try:
        with tifffile_complaints_held(path), tifffile.TiffFile(path) as tif:
            chosen = tif.pages[tiff_page(path, len(tif.pages), page)]
            check_pixels(path, (chosen.imagewidth, chosen.imagelength))
            if not _streamable(chosen, path.stat().st_size, min_pixels):
                return None
            return TiffRows(path, chosen, tif.byteorder)
    except ImageError:
        raise
    except Exception:  # a damaged file: read_image gives its one-line error
        return None


def _streamable(page: tifffile.TiffPage, file_size: int, min_pixels: int) -> bool:
    """Whether a page's pixels are raw rows in strips that :class:`TiffRows` can read."""
    height, width = page.imagelength, page.imagewidth
    rows = min(page.rowsperstrip or height, height)
    strip_bytes = [min(rows, height - i * rows) * width * page.bitspersample // 8
                   for i in range(-(-height // rows))]  # fmt: skip
    return (
        height * width >= min_pixels
        and page.compression == tifffile.COMPRESSION.NONE
        and not page.is_tiled
        and page.samplesperpixel == 1
        and page.imagedepth == 1
        and page.fillorder == 1
        and page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
        and np.dtype(page.dtype) in (np.uint8, np.uint16)
        and page.shape == (height, width)
        and list(page.databytecounts) == strip_bytes
        and max(o + c for o, c in zip(page.dataoffsets, page.databytecounts)) <= file_size
    )
