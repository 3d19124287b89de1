"""What the microscope recorded in its TIFFs: pixel size, magnification, data-bar row.

Read through tifffile's own parsers of the vendor tags (docs/data_prep.md, "Files from
real microscopes"):

- FEI / Thermo Fisher (tags 34680 FEI_SFEG, 34682 FEI_HELIOS; ``TiffFile.fei_metadata``):
  INI text. ``[Scan] PixelWidth`` (or ``[EScan]``) in metres, ``[Image] ResolutionY`` =
  the rows above the data bar, ``[Beam] HV`` in volts, ``[Detectors] Name``,
  ``[System] SystemType``. FEI records no nominal magnification, so none is read.
- Zeiss SmartSEM (tag 34118 CZ_SEM; ``TiffFile.sem_metadata``): ``AP_PIXEL_SIZE``
  (value and unit), ``AP_MAG`` (``"10.00 K X"``), ``AP_ACTUALKV`` (kV),
  ``DP_DETECTOR_CHANNEL``. SmartSEM records no data-bar row.

- ImageJ / Fiji (a TIFF Fiji saved calibrated, as aeatrain.predict writes them): the
  ``unit`` of the ImageJ description and XResolution (pixels per unit).

Files without any of these (BMP, PNG, plain TIFFs) have no calibration: ``None``.
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

log = logging.getLogger(__name__)

_NM_PER_UNIT = {"pm": 1e-3, "nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "mm": 1e6, "m": 1e9}
_ZEISS_MAG = re.compile(r"^\s*([0-9.]+)\s*([KM]?)\s*X\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Calibration:
    """A file's vendor calibration; any figure the vendor did not record is ``None``."""

    vendor: str  # "fei", "zeiss" or "imagej"
    pixel_size_nm: float | None = None
    magnification: float | None = None
    bar_row: int | None = None  # first row of the data bar (rows above it are the image)
    details: dict[str, Any] = field(default_factory=dict)  # HV, detector, system

    def as_record(self) -> dict[str, Any]:
        """The JSON form kept in registration.json, sample json and manifest."""
        return {
            "vendor": self.vendor,
            "pixel_size_nm": self.pixel_size_nm,
            "magnification": self.magnification,
            "bar_row": self.bar_row,
            **self.details,
        }


def cut_bar(image: np.ndarray, bar_row: int | None, path: str | os.PathLike) -> np.ndarray:
    """Rows ``[0, bar_row)``: the image without the SEM data bar (``None``: no bar).

    The one cut of a data bar at a row the user gave (data_prep's and predict's
    ``--bar-row``; every caller passes its row, there is no default row here). A row at or
    past the image's last cuts nothing, with a warning naming the file; a row below 1 is
    a UserError.
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


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """The vendor calibration of a TIFF, or None (not a TIFF, whatever its name, or no
    vendor tags).

    Raises UserError naming the file when a vendor tag is there but unusable (a pixel
    size that is not a positive number).
    """
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.fei_metadata:
                return _fei_calibration(tif.fei_metadata, path)
            if tif.sem_metadata:
                return _zeiss_calibration(tif.sem_metadata, path)
            return _imagej_calibration(tif)
    except UserError:
        raise
    except Exception:  # not a TIFF after all: read_image names the problem
        return None


def _imagej_calibration(tif: tifffile.TiffFile) -> Calibration | None:
    """ImageJ's calibration: unit in the description, XResolution = pixels per unit."""
    unit = (tif.imagej_metadata or {}).get("unit")
    unit = {"micron": "um", "\\u00B5m": "um"}.get(unit, unit)
    resolution = tif.pages.first.tags.get("XResolution")
    if unit not in _NM_PER_UNIT or resolution is None:
        return None
    numerator, denominator = resolution.value
    if numerator <= 0 or denominator <= 0:
        return None
    return Calibration(vendor="imagej", pixel_size_nm=denominator / numerator * _NM_PER_UNIT[unit])


def _positive(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserError(f"{path}: {what} {value!r} in the vendor metadata is not a positive number")
    if not math.isfinite(value):
        raise UserError(f"{path}: {what} {value!r} in the vendor metadata is not finite")
    return float(value)


def _fei_calibration(meta: dict[str, dict[str, Any]], path: Path) -> Calibration:
    """FEI INI sections (tifffile parsed the numbers) -> Calibration."""
    width_m = None
    for section in ("Scan", "EScan"):
        if "PixelWidth" in meta.get(section, {}):
            width_m = _positive(meta[section]["PixelWidth"], path, f"[{section}] PixelWidth")
            break
    bar_row = meta.get("Image", {}).get("ResolutionY")
    if bar_row is not None:
        bar_row = int(_positive(bar_row, path, "[Image] ResolutionY"))
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
        pixel_size_nm=None if width_m is None else width_m * 1e9,
        bar_row=bar_row,
        details=details,
    )


def _zeiss_value(meta: dict[str, Any], key: str) -> tuple[Any, str]:
    """(value, unit) of a SmartSEM entry (tifffile keeps ``(label, value[, unit])``)."""
    entry = meta.get(key)
    if not isinstance(entry, tuple) or len(entry) < 2:
        return None, ""
    return entry[1], entry[2] if len(entry) > 2 else ""


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


def _zeiss_calibration(meta: dict[str, Any], path: Path) -> Calibration:
    """SmartSEM entries -> Calibration."""
    size, unit = _zeiss_value(meta, "ap_pixel_size")
    pixel_nm = None
    if size is not None:
        if unit not in _NM_PER_UNIT:
            raise UserError(f"{path}: AP_PIXEL_SIZE unit {unit!r} is not one of pm, nm, µm")
        pixel_nm = _positive(size, path, "AP_PIXEL_SIZE") * _NM_PER_UNIT[unit]
    magnification = _zeiss_magnification(_zeiss_value(meta, "ap_mag")[0], path)
    details = {}
    kv, kv_unit = _zeiss_value(meta, "ap_actualkv")
    if isinstance(kv, int | float):
        details["hv_kv"] = float(kv) / 1000 if kv_unit == "V" else float(kv)
    detector = _zeiss_value(meta, "dp_detector_channel")[0]
    if detector:
        details["detector"] = str(detector)
    return Calibration(
        vendor="zeiss", pixel_size_nm=pixel_nm, magnification=magnification, details=details
    )


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
    pixel_size_nm: float, *, magnification: float, hv_kv: float, detector: str
) -> str:
    """SmartSEM text of a Zeiss tag (34118) as the instruments write it: for synthetic files."""
    mag = f"{magnification / 1000:.2f} K X" if magnification >= 1000 else f"{magnification:g} X"
    return (
        "0\r\n"
        f"AP_PIXEL_SIZE\r\nPixel Size = {pixel_size_nm:.4g} nm\r\n"
        f"AP_MAG\r\nMag = {mag}\r\n"
        f"AP_ACTUALKV\r\nEHT = {hv_kv:.2f} kV\r\n"
        f"DP_DETECTOR_CHANNEL\r\nSignal A = {detector}\r\n"
    )
