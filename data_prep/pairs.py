"""Finding LR/HR pairs in a raw folder by name: ``<name>_<magnification>.<ext>``.

The public dataset's layout (docs/formats.md, section 1): two files per name, the
magnification is the integer after the LAST underscore, the lower one is LR. Anything
that breaks the layout is the user's to fix, so it stops the build with one line naming
the file before any work is done. Files that are not images (the ``.txt`` sidecars SEM
software writes, ``truth.json``) are skipped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeatrain.errors import UserError
from aeatrain.imageio import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<name>.+)_(?P<mag>\d+)$")


@dataclass(frozen=True)
class RawPair:
    """Two acquisitions of one field: ``hr_mag / lr_mag`` is the scale."""

    name: str
    lr_path: Path
    hr_path: Path
    lr_mag: int
    hr_mag: int

    @property
    def scale(self) -> float:
        return self.hr_mag / self.lr_mag


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
    return RawPair(name, lr_path, hr_path, lr_mag, hr_mag)


def find_pairs(raw: str | Path) -> list[RawPair]:
    """All pairs of ``raw`` in name order; a layout problem raises UserError naming the file.

    Every pair must have the same magnification ratio: one dataset has one scale.
    """
    raw = Path(raw)
    groups = _group_by_name(_image_files(raw))
    pairs = [_pair(name, members) for name, members in sorted(groups.items())]
    scales = {p.scale for p in pairs}
    if len(scales) > 1:
        examples = {}
        for p in pairs:
            examples.setdefault(p.scale, p.name)
        listed = ", ".join(f"{s:g} ({n})" for s, n in sorted(examples.items()))
        raise UserError(
            f"{raw}: pairs have different magnification ratios: {listed}; "
            "build one dataset per ratio"
        )
    return pairs


def cut_bar(image: np.ndarray, bar_row: int | None, path: Path) -> np.ndarray:
    """Rows ``[0, bar_row)``: the image without the SEM data bar (``None``: no bar)."""
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


def load_pair_images(pair: RawPair, bar_row: int | None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Read both images and cut their bars: ``(lr, hr, lr_bit_depth, hr_bit_depth)``.

    An unreadable file (not an image, truncated) raises ImageError naming it.
    """
    lr, lr_depth = read_image(pair.lr_path)
    hr, hr_depth = read_image(pair.hr_path)
    return (
        cut_bar(lr, bar_row, pair.lr_path),
        cut_bar(hr, bar_row, pair.hr_path),
        lr_depth,
        hr_depth,
    )
