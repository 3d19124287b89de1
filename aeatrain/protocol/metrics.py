"""The paper's image-quality metrics: PSNR, SSIM, their gains over the input, Otsu masks.

The published evaluation (the AEANet authors' notebook) scores every test tile with
OpenCV's ``cv2.PSNR`` and scikit-image's SSIM on the 0..255 scale:

- the input (the registered bicubic LR) is scored as the integer image it is;
- the prediction, a float image in [0, 1], is multiplied by 255 in float32 and clipped to
  [0, 255], NOT rounded, and the HR tile is cast to float;
- dPSNR = PSNR(pred, HR) - PSNR(input, HR), dSSIM likewise: the gain over simply
  upsampling, which is what the paper reports.

This module follows that exactly. Two points the published code leaves open are decided
here (docs/evaluation.md says why):

- 16-bit data is scored on its own scale: ``R = 65535`` for PSNR and
  ``data_range = 65535`` for SSIM. Both metrics are then invariant to the bit depth: a
  16-bit image equal to 257 x an 8-bit one scores exactly as the 8-bit one.
- Foreground/background: Otsu's threshold is taken on the HR tile (the truth, the same
  for every method compared); foreground = pixels ABOVE the threshold (bright specimen
  features on the darker substrate), background = the rest. PSNR over a mask uses
  cv2.PSNR's formula restricted to the mask's pixels.

Aggregation is the paper's: average over the tiles of a pair, then over pairs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict
from skimage.filters import threshold_otsu
from skimage.metrics import structural_similarity

from aeatrain.data.format import Region, read_document
from aeatrain.files.images import max_value

# cv2.PSNR computes 20*log10(R / (sqrt(mse) + DBL_EPSILON)); the masked PSNR copies it.
_DBL_EPSILON = float(np.finfo(np.float64).eps)

# Fields of TileScores that are averaged; the d* fields are derived from them.
_SCORE_FIELDS = (
    "psnr",
    "ssim",
    "input_psnr",
    "input_ssim",
    "fg_psnr",
    "fg_input_psnr",
    "bg_psnr",
    "bg_input_psnr",
)


def prediction_on_scale(pred: np.ndarray, bit_depth: int) -> np.ndarray:
    """Model output in [0, 1] -> float32 on the image's scale, clipped, not rounded.

    This is the published ``np.clip(x * 255, 0, 255)`` on a float32 ``x``: the product is
    float32, so the clipped values are exactly what the paper's code scored.
    """
    top = np.float32(max_value(bit_depth))
    return np.clip(np.asarray(pred, dtype=np.float32) * top, 0, top)


def _as_pair(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same dtype for both (cv2.PSNR needs it): integers stay integers, else float64.

    float32 -> float64 is exact, so scores equal the published float32 calls; float64 also
    matches old scikit-image's ``compare_ssim`` (which always computed in float64) where
    the current ``structural_similarity`` would compute a float32 input in float32.
    """
    if image.shape != reference.shape:
        raise ValueError(f"image {image.shape} and reference {reference.shape} differ in shape")
    if image.dtype == reference.dtype and image.dtype in (np.uint8, np.uint16):
        return image, reference
    return image.astype(np.float64), reference.astype(np.float64)


def psnr(image: np.ndarray, reference: np.ndarray, *, bit_depth: int) -> float:
    """PSNR in dB by ``cv2.PSNR`` with ``R`` = 255 or 65535; images on that scale."""
    image, reference = _as_pair(image, reference)
    return float(cv2.PSNR(image, reference, float(max_value(bit_depth))))


def ssim(image: np.ndarray, reference: np.ndarray, *, bit_depth: int) -> float:
    """SSIM by scikit-image's defaults (7x7 uniform window), ``data_range`` = 255 or 65535."""
    image, reference = _as_pair(image, reference)
    image, reference = image.astype(np.float64), reference.astype(np.float64)
    return float(structural_similarity(image, reference, data_range=float(max_value(bit_depth))))


def masked_psnr(
    image: np.ndarray, reference: np.ndarray, mask: np.ndarray, *, bit_depth: int
) -> float:
    """cv2.PSNR's formula over the pixels where ``mask`` is true; NaN for an empty mask."""
    if not mask.any():
        return math.nan
    diff = image[mask].astype(np.float64) - reference[mask].astype(np.float64)
    rmse = math.sqrt(float(np.mean(diff * diff)))
    return 20.0 * math.log10(max_value(bit_depth) / (rmse + _DBL_EPSILON))


def otsu_masks(hr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Foreground (HR > Otsu threshold), background (the rest) and the threshold.

    scikit-image histograms integer images with one bin per value, so the threshold is
    exact for 8 and 16 bit alike (it equals OpenCV's THRESH_OTSU on 8-bit tiles). A flat
    tile has no threshold: everything is background and the foreground is empty.
    """
    if hr.min() == hr.max():
        threshold = float(hr.flat[0])
    else:
        threshold = float(threshold_otsu(hr))
    foreground = hr > threshold
    return foreground, ~foreground, threshold


@dataclass(frozen=True)
class TileScores:
    """Every figure of one test tile; ``d*`` are the gains over the input (the paper's)."""

    psnr: float
    ssim: float
    input_psnr: float
    input_ssim: float
    fg_psnr: float  # NaN when the tile has no foreground
    fg_input_psnr: float
    bg_psnr: float
    bg_input_psnr: float
    threshold: float  # Otsu threshold on the HR tile, on the image's scale
    fg_fraction: float  # share of the tile's pixels in the foreground

    @property
    def dpsnr(self) -> float:
        return self.psnr - self.input_psnr

    @property
    def dssim(self) -> float:
        return self.ssim - self.input_ssim

    @property
    def fg_dpsnr(self) -> float:
        return self.fg_psnr - self.fg_input_psnr

    @property
    def bg_dpsnr(self) -> float:
        return self.bg_psnr - self.bg_input_psnr

    def as_dict(self) -> dict[str, float]:
        """Plain dict with the gains, for JSON (NaN -> None is left to the writer)."""
        gains = {
            "dpsnr": self.dpsnr,
            "dssim": self.dssim,
            "fg_dpsnr": self.fg_dpsnr,
            "bg_dpsnr": self.bg_dpsnr,
        }
        return {**asdict(self), **gains}


def score_tile(pred: np.ndarray, lr: np.ndarray, hr: np.ndarray, *, bit_depth: int) -> TileScores:
    """Score one test tile: ``pred`` float (H, W) in [0, 1]; ``lr``, ``hr`` integer (H, W).

    ``lr`` is the input the model saw (registered bicubic LR in the HR frame); it is
    scored as the integer image it is, as the published code does.
    """
    if lr.dtype != hr.dtype or lr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"lr {lr.dtype} and hr {hr.dtype} must both be uint8 or uint16")
    scaled = prediction_on_scale(pred, bit_depth)  # float32 on 0..R, clipped
    foreground, background, threshold = otsu_masks(hr)
    return TileScores(
        psnr=psnr(scaled, hr, bit_depth=bit_depth),
        ssim=ssim(scaled, hr, bit_depth=bit_depth),
        input_psnr=psnr(lr, hr, bit_depth=bit_depth),
        input_ssim=ssim(lr, hr, bit_depth=bit_depth),
        fg_psnr=masked_psnr(scaled, hr, foreground, bit_depth=bit_depth),
        fg_input_psnr=masked_psnr(lr, hr, foreground, bit_depth=bit_depth),
        bg_psnr=masked_psnr(scaled, hr, background, bit_depth=bit_depth),
        bg_input_psnr=masked_psnr(lr, hr, background, bit_depth=bit_depth),
        threshold=threshold,
        fg_fraction=float(foreground.mean()),
    )


def score_regions(
    pred: np.ndarray,
    lr: np.ndarray,
    hr: np.ndarray,
    regions: Mapping[str, Region],
    *,
    bit_depth: int,
) -> dict[str, TileScores]:
    """Score each region (x1/y1 exclusive) of a whole image.

    ``pred``, ``lr``, ``hr`` are the whole (H, W) images; ``regions`` is a full sample's
    ``test_regions`` (docs/formats.md section 2), scored in name order.
    """
    scores = {}
    for name in sorted(regions):
        window = regions[name].window
        scores[name] = score_tile(pred[window], lr[window], hr[window], bit_depth=bit_depth)
    return scores


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def mean_scores(tiles: Mapping[str, TileScores]) -> dict[str, float]:
    """Average a pair's tiles; NaN entries (a tile without foreground) are left out."""
    means = {f: _nanmean([getattr(t, f) for t in tiles.values()]) for f in _SCORE_FIELDS}
    return _with_gains(means)


def average_pairs(pairs: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average per-pair means (from :func:`mean_scores`) over pairs: the paper's figure."""
    means = {f: _nanmean([p[f] for p in pairs.values()]) for f in _SCORE_FIELDS}
    return _with_gains(means)


def _with_gains(means: dict[str, float]) -> dict[str, float]:
    """Add dpsnr, dssim, fg_dpsnr, bg_dpsnr as differences of the averaged scores.

    The difference of means equals the mean of differences whenever no value is NaN; a
    tile without foreground drops out of both foreground means alike.
    """
    return {
        **means,
        "dpsnr": means["psnr"] - means["input_psnr"],
        "dssim": means["ssim"] - means["input_ssim"],
        "fg_dpsnr": means["fg_psnr"] - means["fg_input_psnr"],
        "bg_dpsnr": means["bg_psnr"] - means["bg_input_psnr"],
    }


# --- metrics.json: the file python -m aeatrain.evaluate writes -------------------------


class _Open(BaseModel):
    """Keys a newer aeatrain adds are kept; those an older one did not write default."""

    model_config = ConfigDict(extra="allow")


class ScoredRun(_Open):
    """A run scored in a row: where it is and what it was (``config``, ``trained_on``:
    None in a file of an aeatrain before they were recorded; read the run folder)."""

    path: str
    model: str | None = None
    step: int | None = None
    weights: str | None = None
    pairs: list[str] = []
    config: dict | None = None
    trained_on: str | None = None


class ScoredPair(_Open):
    run: str | None = None
    mean: dict[str, float | None] = {}  # :func:`mean_scores` of the pair's tiles
    tiles: dict[str, dict[str, float | None]] = {}  # tile -> :meth:`TileScores.as_dict`


class MetricsRow(_Open):
    """One row of the table: a run, a seed group or a self-training set of runs."""

    label: str | None = None
    kind: str | None = None  # "run" or "selftrain"
    runs: list[ScoredRun] = []
    prediction: dict | None = None  # the tiling the predictions were made with
    summary: dict[str, float | None] = {}  # :func:`average_pairs`: the row's figures
    pairs: dict[str, ScoredPair] = {}


class ScoredData(_Open):
    path: str | None = None
    manifest_sha256: str


class MetricsFile(_Open):
    """``metrics.json`` (docs/formats.md): the data scored, the protocol, the rows; NaN
    (a tile without foreground) is written as null."""

    format: Literal["aeatrain-metrics"] = "aeatrain-metrics"
    format_version: Literal[1] = 1
    data: ScoredData
    rows: list[MetricsRow]


def _finite(value):
    """JSON has no NaN: NaN -> null, recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def metrics_json_text(document: dict) -> str:
    """The text of ``metrics.json`` for ``document``; checked against :class:`MetricsFile`
    first, so the writer cannot drift from the reader."""
    document = _finite(document)
    MetricsFile.model_validate(document)
    return json.dumps(document, indent=1) + "\n"


def read_metrics(path: str | Path) -> MetricsFile:
    """A ``metrics.json``; UserError naming the file and the field that is wrong."""
    return read_document(path, MetricsFile, "a metrics.json of aeatrain.evaluate")
