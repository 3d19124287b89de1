"""What the microscope recorded about its images: pixel size, magnification, data bar.

One reader of vendor metadata (docs/data_prep.md, "Files from real microscopes", has the
vendor table and why this is our own parser rather than RosettaSciIO's). Every pixel
size here agrees within 0.1 % with RosettaSciIO 0.15's reading of the same file where
RosettaSciIO reads it (FEI, Zeiss, ImageJ; tests/data_prep/test_dp_vendor_files.py):

- FEI / Thermo Fisher (tags 34680 FEI_SFEG, 34682 FEI_HELIOS; ``TiffFile.fei_metadata``):
  INI text. Pixel size: ``[Scan] PixelWidth`` in metres, else ``[EScan] PixelWidth``,
  else ``[IRBeam] HFW`` / ``[Image] ResolutionX`` (Nav-Cam images). ``[Image]
  ResolutionY`` = the rows above the data bar; ``[Beam] HV`` in volts, ``[Detectors]
  Name``, ``[System] SystemType``. FEI records no nominal magnification.
- Zeiss SmartSEM (tag 34118 CZ_SEM; ``TiffFile.sem_metadata``): ``AP_IMAGE_PIXEL_SIZE``
  is the stored image's pixel size and wins; else ``AP_WIDTH`` (the field width) / the
  image width; else ``AP_PIXEL_SIZE`` x 1024 / the image width (``AP_PIXEL_SIZE`` is the
  pixel of a 1024-wide frame, whatever the stored width). ``AP_MAG`` (``"10.00 K X"``),
  ``AP_ACTUALKV``, ``DP_DETECTOR_CHANNEL``. SmartSEM records no data-bar row.
- TESCAN (tag 50431, or the same text in a ``NAME-tif.hdr`` sidecar, ``NAME-png.hdr``
  beside a PNG): INI-like text; ``PixelSizeX`` in metres, ``Magnification``, ``HV`` in
  volts, ``Detector``, ``Device``, ``ImageStripSize`` = the height of the data bar at the
  bottom of the image.
- JEOL (a ``.txt`` sidecar beside the image, same stem): ``$CM_MAG``, ``$CM_FULL_SIZE``
  (width and height of the image area: rows below it are the data bar),
  ``$$SM_MICRON_MARKER`` (the scale bar's length, ``1um``) over ``$$SM_MICRON_BAR`` (its
  length in pixels of the full-size frame) = the pixel size; ``$CM_ACCEL_VOLT`` (kV),
  ``$CM_SIGNAL``, ``$CM_INSTRUMENT``.
- ImageJ / Fiji (a TIFF Fiji saved calibrated, as aeatrain.predict writes them): the
  ``unit`` of the ImageJ description (a length unit as ImageJ saves what its users type:
  ``micron``, ``nanometers``, ``\\u00C5`` ...) and XResolution (pixels per unit).

Files without any of these (BMP, PNG, plain TIFFs) have no calibration: ``None``.
Metadata that makes no sense (a pixel size that is not a positive number, a data-bar row
beyond the image) is a UserError naming the file and the field.

The data bar: :func:`cut_data_bar` is the one policy (data_prep build and predict/refmaps
use it): ``--no-bar``, else ``--bar-row``, else the row the metadata records, else the
public dataset's layout (1280 x 1024: bar from row 944), else a detected vendor data bar
(:func:`detect_data_bar`), else the whole image; it says which it used.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from aeatrain.errors import UserError
from aeatrain.files.images import image_size

log = logging.getLogger(__name__)

_NM_PER_UNIT = {"pm": 1e-3, "nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "mm": 1e6, "m": 1e9}
# ImageJ's Set Scale takes any text as the unit and saves it as typed, non-ASCII letters
# as \uXXXX escapes (ImageJ 1.53t: "um" and "µm" -> "\u00B5m", "A" -> "\u00C5"); these
# are the length units its users type. ImageJ also calls 1/dpi "inch" and 1/dpcm "cm"
# (print resolution of scanners and photo editors, not a sample's pixel): not read.
_IMAGEJ_NM_PER_UNIT = _NM_PER_UNIT | {
    "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometers": 1e3,
    "nanometer": 1.0, "nanometers": 1.0, "Å": 0.1, "angstrom": 0.1, "angstroms": 0.1,
}  # fmt: skip
_UNICODE_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")
_ZEISS_MAG = re.compile(r"^\s*([0-9.]+)\s*([KM]?)\s*X\s*$", re.IGNORECASE)
_LENGTH = re.compile(r"^\s*([0-9.]+(?:[eE][-+]?\d+)?)\s*(pm|nm|um|µm|μm|mm|m)\s*$")
TESCAN_TAG = 50431
ZEISS_FRAME_WIDTH = 1024  # AP_PIXEL_SIZE is the pixel of a frame this wide
PUBLIC_LAYOUT = (1280, 1024)  # (width, height) of the public dataset's files
PUBLIC_BAR_ROW = 944  # their 80-row data bar starts here


@dataclass(frozen=True)
class Calibration:
    """A file's vendor calibration; any figure the vendor did not record is ``None``.

    ``pixel_size_from`` names the field the pixel size came from; ``bar_from`` the field
    that placed the data bar (``bar_row`` None with a ``bar_from``: the field says there
    is no bar)."""

    vendor: str  # "fei", "zeiss", "tescan", "jeol" or "imagej"
    pixel_size_nm: float | None = None
    magnification: float | None = None
    bar_row: int | None = None  # first row of the data bar (rows above it are the image)
    details: dict[str, Any] = field(default_factory=dict)  # HV, detector, system
    pixel_size_from: str | None = None
    bar_from: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The JSON form kept in registration.json, sample json and manifest."""
        return {
            "vendor": self.vendor,
            "pixel_size_nm": self.pixel_size_nm,
            "pixel_size_from": self.pixel_size_from,
            "magnification": self.magnification,
            "bar_row": self.bar_row,
            "bar_from": self.bar_from,
            **self.details,
        }


def cut_bar(image: np.ndarray, bar_row: int | None, path: str | os.PathLike) -> np.ndarray:
    """Rows ``[0, bar_row)``: the image without the SEM data bar (``None``: no bar).

    The cut at a row the user gave (``--bar-row``). A row at or past the image's last
    cuts nothing, with a warning naming the file; a row below 1 is a UserError.
    """
    if bar_row is None:
        return image
    if bar_row <= 0:
        raise UserError(f"--bar-row: {bar_row} must be positive")
    if image.shape[0] <= bar_row:
        log.warning(
            "%s: %d rows, not more than --bar-row %d: no data bar cut",
            path,
            image.shape[0],
            bar_row,
        )
        return image
    return image[:bar_row]


@dataclass(frozen=True)
class BarCut:
    """Where a file's data bar was cut (``row`` None: kept whole) and why."""

    row: int | None
    source: str  # "--no-bar", "--bar-row", a metadata field, "public layout", "detected", "none"


def cut_data_bar(
    image: np.ndarray,
    path: str | os.PathLike,
    calibration: Calibration | None,
    *,
    bar_row: int | None = None,
    no_bar: bool = False,
) -> tuple[np.ndarray, BarCut]:
    """The image without its data bar, and where and why it was cut: the one policy.

    ``no_bar``: whole. ``bar_row``: rows ``[0, bar_row)`` (:func:`cut_bar`). Else the
    row the vendor metadata records (FEI ResolutionY, TESCAN ImageStripSize, JEOL
    $CM_FULL_SIZE). Else an image of the public dataset's layout (1280 x 1024, whose
    80-row data bar starts at row 944) is cut at 944. Else a vendor data bar found at
    the bottom (:func:`detect_data_bar`), else the whole image. A cut without a row the
    user gave is logged naming the file.
    """
    height, width = image.shape[:2]
    if no_bar:
        return image, BarCut(None, "--no-bar")
    if bar_row is not None:
        kept = cut_bar(image, bar_row, path)
        return kept, BarCut(bar_row if kept.shape[0] < height else None, "--bar-row")
    if calibration is not None and calibration.bar_from is not None:
        row, source = calibration.bar_row, calibration.bar_from
    elif (width, height) == PUBLIC_LAYOUT:
        row, source = PUBLIC_BAR_ROW, "public layout"
    else:
        row = detect_data_bar(image)
        source = "detected" if row is not None else "none"
    if row is None or row >= height:
        return image, BarCut(None, source)
    log.info("%s: data bar cut at row %d of %d (%s)", path, row, height, source)
    return image[:row], BarCut(row, source)


_BAR_MIN_ROWS = 8
_BAR_MAX_FRACTION = 0.35  # a data bar is at most this fraction of the image's height
_BAR_BACKGROUND = 0.5  # a bar row: its most common value covers at least this fraction


def detect_data_bar(image: np.ndarray) -> int | None:
    """First row of a vendor data bar at the bottom of ``image`` (H, W), or None.

    A data bar (TESCAN, JEOL, Hitachi, Zeiss write them) is a band of rows of flat fill
    with text and a scale bar on it: in every row of the band one value covers at least
    half the pixels, which no row of a noisy SEM image does. Found: the
    band at the bottom where that holds for every row, at least 8 rows high, at most 35
    % of the image, and with text (some row not all background). A flat band without
    text (a blank border, a saturated region) is not taken for a bar.
    """
    height = image.shape[0]
    limit = int(height * _BAR_MAX_FRACTION)
    row, has_text = height, False
    while height - row < limit:
        counts = np.unique(image[row - 1], return_counts=True)[1]
        top = counts.max()
        if top < _BAR_BACKGROUND * image.shape[1]:
            break
        has_text |= bool(top < image.shape[1])
        row -= 1
    if height - row < _BAR_MIN_ROWS or height - row >= limit or not has_text:
        return None
    return row


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """The vendor calibration of an image, or None (no vendor tags, no sidecar).

    TIFF tags first (FEI, Zeiss, TESCAN, then ImageJ's), then a sidecar beside the file
    (any image format): TESCAN's ``NAME-tif.hdr``, JEOL's ``NAME.txt``. Raises UserError naming the file and the field
    when the metadata is there but makes no sense (a pixel size that is not a positive
    number, a data-bar row beyond the image or below 1).
    """
    path = Path(path)
    size = image_size(path)  # (width, height), None: not an image read_image names
    if size is None:
        return None
    calibration = None
    try:
        with tifffile.TiffFile(path) as tif:
            calibration = _tagged_calibration(tif, path, size)
    except UserError:
        raise
    except Exception:  # not a TIFF after all: only a sidecar can calibrate it
        pass
    return calibration or _tescan_sidecar(path, size) or _jeol_calibration(path, size)


def _tagged_calibration(tif: tifffile.TiffFile, path: Path, size: tuple[int, int]):
    if tif.fei_metadata:
        return _fei_calibration(tif.fei_metadata, path, size)
    if tif.sem_metadata:
        return _zeiss_calibration(tif.sem_metadata, path, size)
    tescan = tif.pages.first.tags.get(TESCAN_TAG)
    if tescan is not None:
        return _tescan_calibration(tescan.value, path, size)
    return _imagej_calibration(tif)


def _imagej_calibration(tif: tifffile.TiffFile) -> Calibration | None:
    """ImageJ's calibration: unit in the description, XResolution = pixels per unit."""
    unit = (tif.imagej_metadata or {}).get("unit")
    if isinstance(unit, str):
        unit = _UNICODE_ESCAPE.sub(lambda escape: chr(int(escape[1], 16)), unit)
    resolution = tif.pages.first.tags.get("XResolution")
    if unit not in _IMAGEJ_NM_PER_UNIT or resolution is None:
        return None
    numerator, denominator = resolution.value
    if numerator <= 0 or denominator <= 0:
        return None
    return Calibration(
        vendor="imagej",
        pixel_size_nm=denominator / numerator * _IMAGEJ_NM_PER_UNIT[unit],
        pixel_size_from=f"ImageJ XResolution ({unit})",
    )


def _positive(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserError(f"{path}: {what} {value!r} in the vendor metadata is not a positive number")
    if not math.isfinite(value):
        raise UserError(f"{path}: {what} {value!r} in the vendor metadata is not finite")
    return float(value)


def _row(value: Any, path: Path, what: str, height: int) -> int:
    """A row number from the metadata: a whole number in [1, height], else UserError."""
    number = _positive(value, path, what)
    if number != int(number):
        raise UserError(
            f"{path}: {what} {value!r} in the vendor metadata is not a whole number of rows"
        )
    if number > height:
        raise UserError(
            f"{path}: {what} {value!r} in the vendor metadata is beyond the image's {height} rows"
        )
    return int(number)


def _bar_row(row: int, height: int) -> int | None:
    """The bar's first row, None where the image ends there (no bar)."""
    return row if row < height else None


def _fei_pixel_size(meta: dict[str, dict[str, Any]], path: Path) -> tuple[float | None, str | None]:
    """(nm, field): [Scan] PixelWidth, else [IRBeam] HFW / [Image] ResolutionX (Nav-Cam;
    RosettaSciIO's order), else [EScan] PixelWidth."""
    if "PixelWidth" in meta.get("Scan", {}):
        return _positive(meta["Scan"]["PixelWidth"], path, "[Scan] PixelWidth") * 1e9, (
            "[Scan] PixelWidth"
        )
    hfw = meta.get("IRBeam", {}).get("HFW")
    columns = meta.get("Image", {}).get("ResolutionX")
    if hfw is not None and columns is not None:
        hfw_m = _positive(hfw, path, "[IRBeam] HFW")
        columns = _positive(columns, path, "[Image] ResolutionX")
        return hfw_m / columns * 1e9, "[IRBeam] HFW / [Image] ResolutionX"
    if "PixelWidth" in meta.get("EScan", {}):
        return _positive(meta["EScan"]["PixelWidth"], path, "[EScan] PixelWidth") * 1e9, (
            "[EScan] PixelWidth"
        )
    return None, None


def _fei_calibration(
    meta: dict[str, dict[str, Any]], path: Path, size: tuple[int, int]
) -> Calibration:
    """FEI INI sections (tifffile parsed the numbers) -> Calibration."""
    pixel_nm, pixel_from = _fei_pixel_size(meta, path)
    bar_row, bar_from = None, None
    recorded = meta.get("Image", {}).get("ResolutionY")
    if recorded is not None:
        bar_from = "FEI [Image] ResolutionY"
        bar_row = _bar_row(_row(recorded, path, "[Image] ResolutionY", size[1]), size[1])
    details = {}
    hv = meta.get("Beam", {}).get("HV", meta.get("EBeam", {}).get("HV"))
    if isinstance(hv, int | float):
        details["hv_kv"] = float(hv) / 1000
    detector = meta.get("Detectors", {}).get("Name")
    if detector:
        details["detector"] = str(detector)
    system = meta.get("System", {}).get("SystemType")
    if system:
        details["system"] = str(system)
    return Calibration(
        vendor="fei",
        pixel_size_nm=pixel_nm,
        bar_row=bar_row,
        details=details,
        pixel_size_from=pixel_from and f"FEI {pixel_from}",
        bar_from=bar_from,
    )


def _zeiss_value(meta: dict[str, Any], key: str) -> tuple[Any, str]:
    """(value, unit) of a SmartSEM entry (tifffile keeps ``(label, value[, unit])``)."""
    entry = meta.get(key)
    if not isinstance(entry, tuple) or len(entry) < 2:
        return None, ""
    return entry[1], entry[2] if len(entry) > 2 else ""


def _zeiss_length_nm(meta: dict[str, Any], key: str, path: Path) -> float | None:
    value, unit = _zeiss_value(meta, key)
    if value is None:
        return None
    if unit not in _NM_PER_UNIT:
        raise UserError(f"{path}: {key.upper()} unit {unit!r} is not one of pm, nm, µm, mm")
    return _positive(value, path, key.upper()) * _NM_PER_UNIT[unit]


def _zeiss_magnification(text: Any, path: Path) -> float | None:
    if text is None:
        return None
    if isinstance(text, int | float):
        return _positive(text, path, "AP_MAG")
    match = _ZEISS_MAG.match(str(text))
    if match is None:
        raise UserError(f"{path}: AP_MAG {text!r} in the Zeiss metadata is not like '10.00 K X'")
    factor = {"": 1, "K": 1e3, "M": 1e6}[match[2].upper()]
    return _positive(float(match[1]) * factor, path, "AP_MAG")


def _zeiss_pixel_size(
    meta: dict[str, Any], path: Path, width: int
) -> tuple[float | None, str | None]:
    """(nm, field) of the stored image: AP_IMAGE_PIXEL_SIZE, AP_WIDTH / width, or
    AP_PIXEL_SIZE x 1024 / width; a field that disagrees with the winner by more than 1 %
    is named in a warning."""
    readings = []
    image_px = _zeiss_length_nm(meta, "ap_image_pixel_size", path)
    if image_px is not None:
        readings.append((image_px, "AP_IMAGE_PIXEL_SIZE"))
    field_width = _zeiss_length_nm(meta, "ap_width", path)
    if field_width is not None:
        readings.append((field_width / width, "AP_WIDTH / image width"))
    frame_px = _zeiss_length_nm(meta, "ap_pixel_size", path)
    if frame_px is not None:
        what = f"AP_PIXEL_SIZE x {ZEISS_FRAME_WIDTH} / image width"
        readings.append((frame_px * ZEISS_FRAME_WIDTH / width, what))
    if not readings:
        return None, None
    pixel_nm, winner = readings[0]
    for other_nm, other in readings[1:]:
        if abs(other_nm / pixel_nm - 1) > 0.01:
            log.warning(
                "%s: Zeiss %s gives %.4g nm, %s %.4g nm; using %s",
                path,
                winner,
                pixel_nm,
                other,
                other_nm,
                winner,
            )
    return pixel_nm, f"Zeiss {winner}"


def _zeiss_calibration(meta: dict[str, Any], path: Path, size: tuple[int, int]) -> Calibration:
    """SmartSEM entries -> Calibration."""
    pixel_nm, pixel_from = _zeiss_pixel_size(meta, path, size[0])
    magnification = _zeiss_magnification(_zeiss_value(meta, "ap_mag")[0], path)
    details = {}
    kv, kv_unit = _zeiss_value(meta, "ap_actualkv")
    if isinstance(kv, int | float):
        details["hv_kv"] = float(kv) / 1000 if kv_unit == "V" else float(kv)
    detector = _zeiss_value(meta, "dp_detector_channel")[0]
    if detector:
        details["detector"] = str(detector)
    return Calibration(
        vendor="zeiss",
        pixel_size_nm=pixel_nm,
        magnification=magnification,
        details=details,
        pixel_size_from=pixel_from,
    )


def _ini_values(text: str) -> dict[str, str]:
    """``key=value`` lines of INI-like text (sections ignored; the first key wins)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.strip().startswith(("[", ";", "#")):
            values.setdefault(key.strip(), value.strip())
    return values


def _number(text: str | None, path: Path, what: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: {what} {text!r} in the vendor metadata is not a number") from None


def _tescan_calibration(value: Any, path: Path, size: tuple[int, int]) -> Calibration:
    """TESCAN tag 50431 or ``.hdr`` text (INI-like, in the tag possibly after binary
    bytes) -> Calibration."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    values = _ini_values(text.replace("\0", "\n"))
    pixel_m = _number(values.get("PixelSizeX"), path, "PixelSizeX")
    magnification = _number(values.get("Magnification"), path, "Magnification")
    strip = _number(values.get("ImageStripSize"), path, "ImageStripSize")
    bar_row, bar_from = None, None
    if strip is not None:
        bar_from = "TESCAN ImageStripSize"
        if strip < 0 or strip != int(strip) or strip >= size[1]:
            raise UserError(
                f"{path}: ImageStripSize {values['ImageStripSize']!r} in the TESCAN metadata "
                f"is not a data-bar height within the image's {size[1]} rows"
            )
        bar_row = _bar_row(size[1] - int(strip), size[1])
    details = {}
    hv = _number(values.get("HV"), path, "HV")
    if hv is not None:
        details["hv_kv"] = hv / 1000
    for key, name in (("Detector", "detector"), ("Device", "system")):
        if values.get(key):
            details[name] = values[key]
    return Calibration(
        vendor="tescan",
        pixel_size_nm=None if pixel_m is None else _positive(pixel_m, path, "PixelSizeX") * 1e9,
        magnification=None
        if magnification is None
        else _positive(magnification, path, "Magnification"),
        bar_row=bar_row,
        details=details,
        pixel_size_from=None if pixel_m is None else "TESCAN PixelSizeX",
        bar_from=bar_from,
    )


def _tescan_sidecar(path: Path, size: tuple[int, int]) -> Calibration | None:
    """TESCAN's ``NAME-tif.hdr`` (``NAME-png.hdr``, ...) beside the image, or None."""
    sidecar = path.with_name(f"{path.stem}-{path.suffix.lstrip('.').lower()}.hdr")
    if not sidecar.is_file():
        return None
    text = sidecar.read_text(encoding="latin-1")
    if "PixelSizeX" not in text and "ImageStripSize" not in text:
        return None  # some other header
    return _tescan_calibration(text, Path(f"{path} (sidecar {sidecar.name})"), size)


def _jeol_fields(text: str) -> dict[str, str]:
    """``$KEY value`` lines of a JEOL sidecar (``$$`` keys too), key without the ``$``s."""
    fields = {}
    for line in text.splitlines():
        if line.startswith("$"):
            key, _, value = line.lstrip("$").partition(" ")
            fields.setdefault(key.strip(), value.strip())
    return fields


def _jeol_calibration(path: Path, size: tuple[int, int]) -> Calibration | None:
    """A JEOL ``.txt`` sidecar beside the image -> Calibration; None without one."""
    sidecar = path.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    fields = _jeol_fields(sidecar.read_text(encoding="latin-1"))
    if "CM_MAG" not in fields and "CM_FULL_SIZE" not in fields:
        return None  # some other text file
    where = Path(f"{path} (sidecar {sidecar.name})")
    magnification = _number(fields.get("CM_MAG"), where, "$CM_MAG")
    full = fields.get("CM_FULL_SIZE", "").split()
    full_size = None
    if full:
        if len(full) != 2:
            raise UserError(f"{where}: $CM_FULL_SIZE {fields['CM_FULL_SIZE']!r} is not 'W H'")
        full_size = [
            int(_positive(_number(v, where, "$CM_FULL_SIZE"), where, "$CM_FULL_SIZE")) for v in full
        ]
    pixel_nm = _jeol_pixel_size(fields, where, full_size, size)
    bar_row, bar_from = None, None
    if full_size is not None and full_size[0] == size[0]:  # the image area's rows
        bar_from = "JEOL $CM_FULL_SIZE"
        bar_row = _bar_row(_row(full_size[1], where, "$CM_FULL_SIZE height", size[1]), size[1])
    details = {}
    kv = _number(fields.get("CM_ACCEL_VOLT"), where, "$CM_ACCEL_VOLT")
    if kv is not None:
        details["hv_kv"] = kv
    for key, name in (("CM_SIGNAL", "detector"), ("CM_INSTRUMENT", "system")):
        if fields.get(key):
            details[name] = fields[key]
    return Calibration(
        vendor="jeol",
        pixel_size_nm=pixel_nm,
        magnification=None if magnification is None else _positive(magnification, where, "$CM_MAG"),
        bar_row=bar_row,
        details=details,
        pixel_size_from=pixel_nm and "JEOL $$SM_MICRON_MARKER / $$SM_MICRON_BAR",
        bar_from=bar_from,
    )


def _jeol_pixel_size(fields, where: Path, full_size, size: tuple[int, int]) -> float | None:
    """The scale bar's length over its pixels, in the full-size frame, then the stored
    image's (a file saved at another width than $CM_FULL_SIZE's)."""
    marker, bar_px = fields.get("SM_MICRON_MARKER"), fields.get("SM_MICRON_BAR")
    if not marker or not bar_px:
        return None
    match = _LENGTH.match(marker)
    if match is None:
        raise UserError(f"{where}: $$SM_MICRON_MARKER {marker!r} is not a length like '1um'")
    length_nm = _positive(float(match[1]), where, "$$SM_MICRON_MARKER") * _NM_PER_UNIT[match[2]]
    pixels = _positive(_number(bar_px, where, "$$SM_MICRON_BAR"), where, "$$SM_MICRON_BAR")
    full_width = full_size[0] if full_size else size[0]
    return length_nm / pixels * full_width / size[0]


def fei_tag_text(
    pixel_size_nm: float, *, bar_row: int, width: int, hv_kv: float, detector: str, system: str
) -> str:
    """INI text of an FEI tag (34682) as the instruments write it: for synthetic files."""
    return (
        "[User]\r\nDate=01/12/2026\r\n"
        f"[System]\r\nSystemType={system}\r\n"
        f"[Beam]\r\nHV={hv_kv * 1000:g}\r\nBeam=EBeam\r\n"
        f"[Scan]\r\nPixelWidth={pixel_size_nm * 1e-9:.6e}\r\nPixelHeight={pixel_size_nm * 1e-9:.6e}\r\n"
        f"[Image]\r\nResolutionX={width}\r\nResolutionY={bar_row}\r\n"
        f"[Detectors]\r\nName={detector}\r\n"
    )


def zeiss_tag_text(
    pixel_size_nm: float, *, width: int, magnification: float, hv_kv: float, detector: str
) -> bytes:
    """SmartSEM text of a Zeiss tag (34118) as the instruments write it, for an image
    ``width`` pixels wide of pixel ``pixel_size_nm``: for synthetic files and tests.

    The unnamed numbers SmartSEM writes first hold, fourth, the pixel of a 1024-wide
    frame in metres (what RosettaSciIO reads; the others, unused by either reader, are 0
    here). AP_PIXEL_SIZE is that frame's pixel too, AP_IMAGE_PIXEL_SIZE the stored
    image's, AP_WIDTH the field width (in µm: Latin-1 bytes, as SmartSEM writes them).
    """
    frame_nm = pixel_size_nm * width / ZEISS_FRAME_WIDTH
    mag = f"{magnification / 1000:.2f} K X" if magnification >= 1000 else f"{magnification:g} X"
    return (
        f"0\r\n0\r\n0\r\n{frame_nm * 1e-9:.9e}\r\n"
        f"AP_PIXEL_SIZE\r\nPixel Size = {frame_nm:.4g} nm\r\n"
        f"AP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = {pixel_size_nm:.4g} nm\r\n"
        f"AP_WIDTH\r\nWidth = {pixel_size_nm * width / 1000:.5g} µm\r\n"
        f"AP_MAG\r\nMag = {mag}\r\n"
        f"AP_ACTUALKV\r\nEHT = {hv_kv:.2f} kV\r\n"
        f"DP_DETECTOR_CHANNEL\r\nSignal A = {detector}\r\n"
    ).encode("latin-1")
