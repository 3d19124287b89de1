"""Pictures of ``data_prep synth``'s specimen families for docs/data_prep.md.

Writes two PNGs (generated, not versioned: ``/docs/*.png`` is ignored):

- ``synth_families.png``: one row per family, an HR crop under the default preset's
  acquisition (left) and the realistic preset's (right), grey as recorded;
- ``synth_viridis.png``: one HR test-tile-sized crop (320 x 314) of the default and of the
  realistic preset, rendered as the published figures show real tiles (per-tile min/max,
  viridis, 274 x 269 nearest neighbour: ``data_prep.semstats.render_like_figures``).

    python benchmarks/synth_pictures.py [--out docs] [--seed 0] [--crop 256]

Every pair is 640 x 480 (the statistics do not depend on the pair's size), about
2 CPU-seconds per image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aeatrain.files.atomic import atomic_write_bytes  # noqa: E402
from aeatrain.files.images import encode_image  # noqa: E402
from data_prep.semstats import render_like_figures  # noqa: E402
from data_prep.synth.config import preset_config  # noqa: E402
from data_prep.synth.families import FAMILIES  # noqa: E402
from data_prep.synth.generate import make_pair  # noqa: E402

PAIR = {"width": 640, "height": 480, "bar_rows": 0}
LABEL_PX = 28


def hr_image(family: str, preset: str, seed: int) -> np.ndarray:
    """HR image area (uint8) of pair 0 of ``family`` under ``preset``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    _, hr, _ = make_pair(preset_config(preset, **PAIR), FAMILIES[family](rng), seed, 0)
    return hr


def _labelled(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with a white strip above it carrying ``text``."""
    strip = np.full((LABEL_PX, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, image])


def families_sheet(seed: int, crop: int) -> np.ndarray:
    rows = []
    for family in FAMILIES:
        cells = []
        for preset in ("default", "realistic"):
            grey = hr_image(family, preset, seed)[:crop, :crop]
            cell = _labelled(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), f"{family}, {preset}")
            cells += [cell, np.full((cell.shape[0], 8, 3), 255, np.uint8)]
        rows += [np.hstack(cells[:-1]), np.full((8, 2 * crop + 8, 3), 255, np.uint8)]
    return np.vstack(rows[:-1])


def viridis_sheet(seed: int) -> np.ndarray:
    cells = []
    for family, preset in (("aggregates", "default"), ("clusters", "realistic")):
        tile = hr_image(family, preset, seed)[:314, :320]
        index = np.round(render_like_figures(tile) * 255).astype(np.uint8)
        colour = cv2.applyColorMap(index, cv2.COLORMAP_VIRIDIS)
        cells += [
            _labelled(colour, f"{preset} ({family})"),
            np.full((269 + LABEL_PX, 8, 3), 255, np.uint8),
        ]
    return np.hstack(cells[:-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=256, help="crop size of each family cell")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, sheet in (
        ("synth_families.png", families_sheet(args.seed, args.crop)),
        ("synth_viridis.png", viridis_sheet(args.seed)),
    ):
        atomic_write_bytes(out / name, encode_image(sheet, ".png"), overwrite=True)
        print(f"wrote {out / name} ({sheet.shape[1]} x {sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
