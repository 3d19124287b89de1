"""Files as each vendor's SEM software writes them, made by tifffile with the vendors'
tag layouts (the layouts RosettaSciIO's TIFF reader and aeatrain.files.microscope read):
FEI/Thermo, Zeiss SmartSEM, TESCAN, JEOL (``.txt`` sidecar) and ImageJ. Each writer
returns the true pixel size of the file in nm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from aeatrain.files.microscope import zeiss_tag_text

# FEI INI text (tag 34682) as a Helios writes it, trimmed: the pixel size in metres,
# ResolutionY = the rows above the data bar
FEI_TEXT = (
    "[User]\r\nDate=12/01/2026\r\nUser=supervisor\r\n"
    "[System]\r\nSystemType=Helios G4 UX\r\n"
    "[Beam]\r\nHV=5000\r\nBeam=EBeam\r\n"
    "[Scan]\r\nDwelltime=3e-06\r\nPixelWidth={px:.6e}\r\nPixelHeight={px:.6e}\r\n"
    "[Image]\r\nResolutionX={width}\r\nResolutionY={rows}\r\n"
    "[Detectors]\r\nName=TLD\r\n"
)
# a Nav-Cam image: no [Scan]; the field width of [IRBeam] over the columns
FEI_NAVCAM_TEXT = (
    "[User]\r\nDate=05/17/2022\r\n[System]\r\nSystemType=Helios G4 UX\r\n"
    "[IRBeam]\r\nHFW={hfw:.6e}\r\nVFW={vfw:.6e}\r\n"
    "[Image]\r\nResolutionX={width}\r\nResolutionY={height}\r\n"
)
# TESCAN (tag 50431): INI-like text, pixel size in metres, ImageStripSize = data-bar rows
TESCAN_TEXT = (
    "[MAIN]\r\nDevice=MIRA3 LMH\r\nMagnification={mag}\r\nPixelSizeX={px:.6e}\r\n"
    "PixelSizeY={px:.6e}\r\n[SEM]\r\nHV=15000\r\nDetector=SE\r\nImageStripSize={strip}\r\n"
)
# JEOL sidecar: the scale bar is MICRON_BAR pixels of the full-size frame long
JEOL_TEXT = (
    "$CM_FORMAT JEOL/SEM\n$CM_VERSION 1.0\n$CM_INSTRUMENT JSM-7600F\n$CM_MAG {mag}\n"
    "$CM_ACCEL_VOLT 15.0\n$CM_SIGNAL SEI\n$CM_FULL_SIZE {width} {rows}\n"
    "$$SM_MICRON_BAR {bar_px}\n$$SM_MICRON_MARKER {marker}\n"
)


def sem_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A noisy 8-bit (H, W) image with no flat rows (no data bar to find)."""
    return np.random.default_rng(seed).integers(20, 236, (height, width), dtype=np.uint8)


def write_fei(path: Path, image: np.ndarray, pixel_nm: float, rows) -> float:
    text = FEI_TEXT.format(px=pixel_nm * 1e-9, width=image.shape[1], rows=rows)
    tifffile.imwrite(path, image, extratags=[(34682, "s", 0, text, True)])
    return pixel_nm


def write_fei_navcam(path: Path, image: np.ndarray, pixel_nm: float) -> float:
    height, width = image.shape
    hfw, vfw = pixel_nm * 1e-9 * width, pixel_nm * 1e-9 * height
    text = FEI_NAVCAM_TEXT.format(hfw=hfw, vfw=vfw, width=width, height=height)
    tifffile.imwrite(path, image, extratags=[(34682, "s", 0, text, True)])
    return pixel_nm


def write_zeiss(path: Path, image: np.ndarray, pixel_nm: float, *, frame_only=False) -> float:
    """``frame_only``: as older SmartSEM writes it, AP_PIXEL_SIZE (a 1024-wide frame's
    pixel) without AP_IMAGE_PIXEL_SIZE and AP_WIDTH."""
    width = image.shape[1]
    text = zeiss_tag_text(pixel_nm, width=width, magnification=25000, hv_kv=3.0, detector="InLens")
    if frame_only:
        lines = text.split(b"\r\n")  # a key line, then its "label = value" line
        drop = {b"AP_IMAGE_PIXEL_SIZE", b"AP_WIDTH"}
        keys_out = {i for i, line in enumerate(lines) if line in drop}
        text = b"\r\n".join(
            line for i, line in enumerate(lines) if i not in keys_out and i - 1 not in keys_out
        )
    tifffile.imwrite(path, image, extratags=[(34118, "s", 0, text, True)])
    return pixel_nm


def write_tescan(path: Path, image: np.ndarray, pixel_nm: float, strip) -> float:
    """The tag as bytes: a binary block, then the text (its first key is AccFrames)."""
    text = "AccFrames=1\r\n" + TESCAN_TEXT.format(mag=20000, px=pixel_nm * 1e-9, strip=strip)
    data = b"TC\x00\x01\x8f\x00\x00\x00" + text.encode("latin-1")
    tifffile.imwrite(path, image, extratags=[(50431, "B", len(data), data, True)])
    return pixel_nm


def write_tescan_hdr(path: Path, image: np.ndarray, pixel_nm: float, strip) -> float:
    """A plain TIFF and the ``NAME-tif.hdr`` sidecar TESCAN writes beside it."""
    tifffile.imwrite(path, image)
    text = TESCAN_TEXT.format(mag=20000, px=pixel_nm * 1e-9, strip=strip)
    path.with_name(f"{path.stem}-tif.hdr").write_text(text, encoding="latin-1")
    return pixel_nm


def write_jeol(path: Path, image: np.ndarray, rows: int, *, bar_px: int = 200) -> float:
    """A plain TIFF and its sidecar; a 1 um scale bar of ``bar_px`` pixels: 1000 / bar_px nm."""
    tifffile.imwrite(path, image)
    text = JEOL_TEXT.format(mag=30000, width=image.shape[1], rows=rows, bar_px=bar_px, marker="1um")
    path.with_suffix(".txt").write_text(text, encoding="latin-1")
    return 1000.0 / bar_px


def write_imagej(path: Path, image: np.ndarray, pixel_nm: float) -> float:
    per_um = 1000.0 / pixel_nm
    tifffile.imwrite(
        path, image, imagej=True, resolution=(per_um, per_um), metadata={"unit": "micron"}
    )
    return pixel_nm


# (name, writer(path) -> true nm, RosettaSciIO reads it, data-bar row the metadata gives)
VENDOR_FILES = {
    "fei": (lambda p: write_fei(p, sem_image(72, 96), 3.3724, 64), True, 64),
    "fei navcam": (lambda p: write_fei_navcam(p, sem_image(55, 77), 264000.0), True, None),
    "zeiss 512": (lambda p: write_zeiss(p, sem_image(24, 512), 11.65), True, None),
    "zeiss 1024": (lambda p: write_zeiss(p, sem_image(12, 1024), 2614.514), True, None),
    "zeiss 2048": (lambda p: write_zeiss(p, sem_image(6, 2048), 12.33), True, None),
    "zeiss 2048 old": (
        lambda p: write_zeiss(p, sem_image(6, 2048), 12.33, frame_only=True),
        True,
        None,
    ),
    "tescan": (lambda p: write_tescan(p, sem_image(80, 64), 2501.2, 20), False, 60),
    "tescan hdr": (lambda p: write_tescan_hdr(p, sem_image(80, 64), 2501.2, 20), False, 60),
    "jeol": (lambda p: write_jeol(p, sem_image(72, 64), 60), False, 60),
    "imagej": (lambda p: write_imagej(p, sem_image(32, 40), 7.5), True, None),
}


def rosettasciio_pixel_nm(path: Path) -> float | None:
    """RosettaSciIO's reading of a TIFF's x pixel size in nm; None: it read no unit."""
    from rsciio.tiff import file_reader  # test-only dependency, 0.2 s to import

    axes = file_reader(str(path))[0]["axes"]
    x = next(axis for axis in axes if axis["name"] == "width")
    per_unit = {"m": 1e9, "µm": 1e3, "nm": 1.0}.get(x["units"])
    return None if per_unit is None else x["scale"] * per_unit
