"""Finding LR/HR pairs in a raw folder: by name, ``<name>_<magnification>.<ext>``, or
listed in a pairs file (data_prep/pairs_file.py).

The public dataset's layout (docs/formats.md, section 1): two files per name, the
magnification is the integer after the LAST underscore, the lower one is LR. Anything
that breaks the layout is the user's to fix, so it stops the build with one line naming
the file before any work is done. Files that are not images (the ``.txt`` sidecars SEM
software writes, ``truth.json``) are skipped.

The scale of a pair (:func:`pair_scale`): the ratio of the pixel sizes the microscope
recorded (aeatrain/files/microscope.py) when both files carry one, else the ratio of the
magnifications (recorded, else from the names). Where both are known they must agree
within 5 %; every pair of a dataset must have the same scale.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeatrain.data.format import pair_name_problem
from aeatrain.errors import UserError
from aeatrain.files.images import IMAGE_SUFFIXES, read_image
from aeatrain.files.microscope import BarCut, Calibration, cut_data_bar, read_calibration

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<name>.+)_(?P<mag>\d+)$")
SCALE_AGREEMENT = 0.05  # pixel sizes and magnifications may disagree by this much
SCALE_DECIMALS = 2  # a scale from pixel sizes is rounded to 0.01 (they are printed rounded)


@dataclass(frozen=True)
class RawPair:
    """Two acquisitions of one field: ``scale`` = HR px per LR px (LR px size / HR px size)."""

    name: str
    lr_path: Path
    hr_path: Path
    scale: float
    lr_mag: float | None = None  # from the name or the metadata; None when unknown
    hr_mag: float | None = None
    lr_calibration: Calibration | None = None
    hr_calibration: Calibration | None = None

    @property
    def pixel_size_nm(self) -> dict[str, float | None]:
        """``{"lr": nm, "hr": nm}`` as recorded by the microscope (None where not)."""
        return {
            "lr": self.lr_calibration.pixel_size_nm if self.lr_calibration else None,
            "hr": self.hr_calibration.pixel_size_nm if self.hr_calibration else None,
        }

    def metadata_record(self) -> dict[str, dict | None]:
        """Each file's vendor metadata as kept in registration.json and sample json."""
        return {
            "lr": self.lr_calibration.as_record() if self.lr_calibration else None,
            "hr": self.hr_calibration.as_record() if self.hr_calibration else None,
        }


def name_magnification(path: Path) -> int | None:
    """The magnification a file name gives (``x_10000.tif`` -> 10000), or None."""
    match = _NAME.match(path.stem)
    return int(match["mag"]) if match else None


def _recorded_mag(calibration: Calibration | None) -> float | None:
    return calibration.magnification if calibration else None


def pair_scale(
    lr_path: Path,
    hr_path: Path,
    lr_cal: Calibration | None,
    hr_cal: Calibration | None,
    names: tuple[float, float] | None,
) -> float:
    """The scale of a pair, or UserError naming the HR file when it cannot be told or
    pixel sizes and magnifications contradict each other by more than 5 %.

    ``names``: (LR, HR) magnifications from the file names, when they give them.
    """
    mags = names
    lr_rec, hr_rec = _recorded_mag(lr_cal), _recorded_mag(hr_cal)
    if mags is None and lr_rec and hr_rec:
        mags = (lr_rec, hr_rec)
    lr_px = lr_cal.pixel_size_nm if lr_cal else None
    hr_px = hr_cal.pixel_size_nm if hr_cal else None
    if lr_px and hr_px:
        ratio = lr_px / hr_px
        if mags is not None and abs(ratio / (mags[1] / mags[0]) - 1) > SCALE_AGREEMENT:
            raise UserError(
                f"{hr_path}: pixel sizes give scale {ratio:.3f} (LR {lr_px:.4g} nm, HR "
                f"{hr_px:.4g} nm) but the magnifications {mags[0]:g} and {mags[1]:g} give "
                f"{mags[1] / mags[0]:.3f}: more than {SCALE_AGREEMENT:.0%} apart"
            )
        scale = round(ratio, SCALE_DECIMALS)
    elif mags is not None:
        scale = mags[1] / mags[0]
    else:
        raise UserError(
            f"{hr_path}: cannot tell the scale: neither {lr_path.name} nor {hr_path.name} "
            "records a pixel size or magnification, and the names give none "
            "(<name>_<magnification>)"
        )
    if scale <= 1:
        raise UserError(
            f"{hr_path}: scale {scale:g} with {lr_path.name} as LR; the LR file must have "
            "the larger pixels (lower magnification)"
        )
    return scale


def raw_pair(name: str, lr_path: Path, hr_path: Path, names=None) -> RawPair:
    """A RawPair with both files' vendor calibration read and its scale checked."""
    lr_cal, hr_cal = read_calibration(lr_path), read_calibration(hr_path)
    scale = pair_scale(lr_path, hr_path, lr_cal, hr_cal, names)
    lr_mag, hr_mag = names if names else (_recorded_mag(lr_cal), _recorded_mag(hr_cal))
    return RawPair(name, lr_path, hr_path, scale, lr_mag, hr_mag, lr_cal, hr_cal)


def check_one_scale(pairs: list[RawPair], where: Path) -> None:
    """Every pair of a dataset must have the same scale; UserError naming ``where``."""
    scales = {p.scale for p in pairs}
    if len(scales) > 1:
        examples = {}
        for p in pairs:
            examples.setdefault(p.scale, p.name)
        listed = ", ".join(f"{s:g} ({n})" for s, n in sorted(examples.items()))
        raise UserError(
            f"{where}: pairs have different magnification ratios (scales): {listed}; "
            "build one dataset per scale"
        )


def _image_files(raw: Path) -> list[Path]:
    if not raw.exists():
        raise UserError(f"{raw}: raw folder does not exist")
    if not raw.is_dir():
        raise UserError(f"{raw}: not a folder (expected a folder of <name>_<mag>.<ext> images)")
    files = sorted(p for p in raw.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.info("%s: ignoring %d non-image files (%s)", raw, len(others), ", ".join(others[:5]))
    if not images:
        raise UserError(
            f"{raw}: no images found (expected <name>_<magnification>.<ext> files, "
            f"ext one of {', '.join(IMAGE_SUFFIXES)})"
        )
    return images


def _group_by_name(images: list[Path]) -> dict[str, list[tuple[int, Path]]]:
    groups: dict[str, list[tuple[int, Path]]] = {}
    for path in images:
        match = _NAME.match(path.stem)
        if match is None:
            raise UserError(
                f"{path}: cannot tell its magnification; expected <name>_<magnification>"
                f"{path.suffix} (e.g. sample1_10000{path.suffix})"
            )
        mag = int(match["mag"])
        if mag <= 0:
            raise UserError(f"{path}: magnification {mag} must be positive")
        problem = pair_name_problem(match["name"])
        if problem is not None:
            raise UserError(f"{path}: {problem}")
        groups.setdefault(match["name"], []).append((mag, path))
    return groups


def _pair(name: str, members: list[tuple[int, Path]]) -> RawPair:
    if len(members) == 1:
        mag, path = members[0]
        raise UserError(
            f"{path}: no partner (expected a second file {name}_<magnification>.<ext> "
            f"at another magnification than {mag})"
        )
    if len(members) > 2:
        listed = ", ".join(p.name for _, p in sorted(members))
        raise UserError(
            f"{members[0][1].parent}: {len(members)} images named {name}: {listed}; "
            "expected exactly two (LR and HR)"
        )
    (lr_mag, lr_path), (hr_mag, hr_path) = sorted(members)
    if lr_mag == hr_mag:
        raise UserError(f"{hr_path}: same magnification as {lr_path.name}; expected LR and HR")
    return raw_pair(name, lr_path, hr_path, (lr_mag, hr_mag))


def find_pairs(raw: str | Path) -> list[RawPair]:
    """All pairs of ``raw`` in name order; a layout problem raises UserError naming the file.

    Every pair must have the same magnification ratio: one dataset has one scale.
    """
    raw = Path(raw)
    groups = _group_by_name(_image_files(raw))
    pairs = [_pair(name, members) for name, members in sorted(groups.items())]
    check_one_scale(pairs, raw)
    return pairs


def load_pair_images(
    pair: RawPair, bar_row: int | None = None, *, no_bar: bool = False, page: int | None = None
) -> tuple[np.ndarray, np.ndarray, int, int, dict[str, BarCut]]:
    """Read both images and cut their bars: ``(lr, hr, lr_depth, hr_depth, bars)``.

    The data bar of each file as aeatrain.files.microscope.cut_data_bar decides (``no_bar``,
    else ``bar_row``, else the vendor's row, else the public layout's, else a detected
    bar, else none); ``bars`` (``{"lr": BarCut, "hr": BarCut}``) says where and why. An
    unreadable file (not an image, truncated) raises ImageError naming it.
    """
    images, depths, bars = [], [], {}
    for key, path, calibration in (
        ("lr", pair.lr_path, pair.lr_calibration),
        ("hr", pair.hr_path, pair.hr_calibration),
    ):
        image, depth = read_image(path, page=page)
        kept, bars[key] = cut_data_bar(image, path, calibration, bar_row=bar_row, no_bar=no_bar)
        images.append(kept)
        depths.append(depth)
    return images[0], images[1], depths[0], depths[1], bars
