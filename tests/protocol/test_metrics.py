"""aeatrain.protocol.metrics against direct OpenCV / scikit-image calls and hand-computed figures."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from aeatrain.data.format import Region
from aeatrain.protocol import metrics

C1 = (0.01 * 255) ** 2  # SSIM's stabilisers for data_range 255


def _tile_pair(seed: int = 0, shape=(40, 56)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HR with dark/bright structure, LR = noisy HR, pred = a float prediction near HR."""
    rng = np.random.default_rng(seed)
    hr = np.where(rng.random(shape) < 0.3, 190, 60) + rng.integers(-20, 20, shape)
    hr = np.clip(hr, 0, 255).astype(np.uint8)
    lr = np.clip(hr + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)
    pred = (hr + rng.normal(0, 5, shape)).astype(np.float32) / 255.0
    pred[0, :4] = [-0.2, 1.3, 0.5, 2.0]  # out of range: must be clipped before scoring
    return pred, lr, hr


def test_psnr_and_ssim_equal_direct_calls_as_the_published_code_makes_them():
    pred, lr, hr = _tile_pair()
    scaled = np.clip(pred * 255, 0, 255)  # float32, as the published notebook
    assert scaled.dtype == np.float32
    want_psnr = cv2.PSNR(scaled, hr.astype("float32"))
    want_ssim = structural_similarity(
        scaled.astype(np.float64), hr.astype(np.float64), data_range=255.0
    )
    scores = metrics.score_tile(pred, lr, hr, bit_depth=8)
    assert scores.psnr == pytest.approx(want_psnr, abs=1e-9)
    assert scores.ssim == pytest.approx(want_ssim, abs=1e-12)
    assert scores.input_psnr == pytest.approx(cv2.PSNR(lr, hr), abs=1e-12)
    assert scores.input_ssim == pytest.approx(
        structural_similarity(lr, hr, data_range=255.0), abs=1e-12
    )
    assert scores.dpsnr == pytest.approx(want_psnr - cv2.PSNR(lr, hr), abs=1e-9)


def test_prediction_is_clipped_not_rounded():
    pred = np.array([[-0.1, 0.5004, 1.7]], dtype=np.float32)
    scaled = metrics.prediction_on_scale(pred, 8)
    assert scaled.dtype == np.float32
    assert scaled[0, 0] == 0.0 and scaled[0, 2] == 255.0
    assert scaled[0, 1] == np.float32(0.5004) * np.float32(255)  # 127.602, not 128
    assert metrics.prediction_on_scale(np.array([[0.5]]), 16)[0, 0] == 32767.5


def test_sixteen_bit_scores_equal_eight_bit_scores_of_the_same_picture():
    """On its own scale (R = 65535) a 16-bit image = 257 x an 8-bit one scores the same."""
    pred, lr, hr = _tile_pair(seed=3)
    eight = metrics.score_tile(pred, lr, hr, bit_depth=8)
    sixteen = metrics.score_tile(
        pred, lr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257, bit_depth=16
    )
    for field in ("psnr", "input_psnr", "fg_psnr", "bg_psnr", "ssim", "input_ssim"):
        assert getattr(sixteen, field) == pytest.approx(getattr(eight, field), abs=1e-6), (
            field
        )  # float32 products
    assert sixteen.psnr == pytest.approx(
        cv2.PSNR(
            metrics.prediction_on_scale(pred, 16).astype(np.float64),
            (hr.astype(np.float64) * 257),
            65535.0,
        ),
        abs=1e-9,
    )


def test_otsu_masks_split_the_hr_tile_like_opencv():
    _, _, hr = _tile_pair(seed=1)
    fg, bg, threshold = metrics.otsu_masks(hr)
    cv_threshold, cv_mask = cv2.threshold(hr, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert threshold == cv_threshold
    assert np.array_equal(fg, cv_mask > 0)
    assert np.array_equal(bg, ~fg)
    assert 0.2 < fg.mean() < 0.4  # the fixture's bright share is 30 %


def test_masked_psnr_over_everything_is_cv2_psnr_and_empty_mask_is_nan():
    _, lr, hr = _tile_pair(seed=2)
    everything = np.ones(hr.shape, dtype=bool)
    assert metrics.masked_psnr(lr, hr, everything, bit_depth=8) == pytest.approx(
        cv2.PSNR(lr, hr), abs=1e-9
    )
    assert math.isnan(metrics.masked_psnr(lr, hr, ~everything, bit_depth=8))
    flat = np.full((8, 8), 77, np.uint8)
    fg, bg, threshold = metrics.otsu_masks(flat)
    assert threshold == 77 and not fg.any() and bg.all()
    scores = metrics.score_tile(flat / 255.0, flat, flat, bit_depth=8)
    assert math.isnan(scores.fg_dpsnr) and scores.bg_dpsnr == pytest.approx(0.0)


def _ssim_const(a: float, b: float) -> float:
    """SSIM of two constant images: the luminance term alone (both variances are 0)."""
    return (2 * a * b + C1) / (a * a + b * b + C1)


def test_hand_computed_table_is_reproduced_exactly():
    """Two pairs of two constant 'tiles' each: every figure has a closed form.

    A constant offset d gives PSNR = 20 log10(255 / |d|); constant images give SSIM =
    (2ab + C1) / (a^2 + b^2 + C1). Pair means first, then the mean over pairs.
    """
    hr_level, shape = 100, (14, 21)
    # (input offset, prediction offset) per tile; pair "a" has 2 tiles, pair "b" 1.
    table = {"a": {"test0": (8, 2), "test1": (-16, 4)}, "b": {"test0": (10, -5)}}
    per_pair = {}
    for pair, tiles in table.items():
        scores = {}
        for tile, (d_in, d_pred) in tiles.items():
            hr = np.full(shape, hr_level, np.uint8)
            lr = np.full(shape, hr_level + d_in, np.uint8)
            pred = np.full(shape, (hr_level + d_pred) / 255.0, np.float32)
            scores[tile] = metrics.score_tile(pred, lr, hr, bit_depth=8)
        per_pair[pair] = metrics.mean_scores(scores)
    result = metrics.average_pairs(per_pair)

    def dpsnr(d_in, d_pred):
        return 20 * math.log10(abs(d_in) / abs(d_pred))

    def dssim(d_in, d_pred):
        return _ssim_const(hr_level + d_pred, hr_level) - _ssim_const(hr_level + d_in, hr_level)

    want_a = (dpsnr(8, 2) + dpsnr(-16, 4)) / 2  # = 20 log10(4) = 12.0412 dB
    want = (want_a + dpsnr(10, -5)) / 2
    assert want_a == pytest.approx(12.041199826559248, abs=1e-12)
    assert result["dpsnr"] == pytest.approx(want, abs=1e-9)
    assert result["dpsnr"] == pytest.approx(9.030899869919434, abs=1e-9)  # (12.04 + 6.02) / 2
    want_ssim = ((dssim(8, 2) + dssim(-16, 4)) / 2 + dssim(10, -5)) / 2
    assert result["dssim"] == pytest.approx(want_ssim, abs=1e-12)
    assert result["dssim"] == pytest.approx(0.0058531, abs=5e-7)  # worked out on paper
    # a constant tile: Otsu has no foreground, the background is the whole tile
    assert result["bg_dpsnr"] == pytest.approx(want, abs=1e-9)
    assert math.isnan(result["fg_dpsnr"])


def test_foreground_background_table_by_hand():
    """HR half 50 / half 200: Otsu splits the halves; errors differ per half."""
    hr = np.full((10, 20), 50, np.uint8)
    hr[:, 10:] = 200
    lr = hr.astype(np.int16).copy()
    lr[:, :10] += 20  # background input error 20
    lr[:, 10:] -= 5  # foreground input error 5
    lr = lr.astype(np.uint8)
    pred = hr.astype(np.float32)
    pred[:, :10] += 2  # background prediction error 2
    pred[:, 10:] += 4  # foreground prediction error 4
    scores = metrics.score_tile(pred / 255.0, lr, hr, bit_depth=8)
    assert scores.fg_fraction == 0.5
    assert 50 <= scores.threshold < 200
    assert scores.fg_dpsnr == pytest.approx(20 * math.log10(5 / 4), abs=1e-9)
    assert scores.bg_dpsnr == pytest.approx(20 * math.log10(20 / 2), abs=1e-9)
    # whole tile: mse_in = (400 + 25) / 2, mse_pred = (4 + 16) / 2
    assert scores.dpsnr == pytest.approx(10 * math.log10(425 / 20), abs=1e-9)


def test_score_regions_uses_exclusive_bounds_and_name_order():
    pred, lr, hr = _tile_pair(seed=4, shape=(30, 40))
    regions = {
        "test1": Region(x0=20, y0=10, x1=40, y1=30),
        "test0": Region(x0=0, y0=0, x1=20, y1=10),
    }
    scores = metrics.score_regions(pred, lr, hr, regions, bit_depth=8)
    assert list(scores) == ["test0", "test1"]
    direct = metrics.score_tile(pred[10:30, 20:40], lr[10:30, 20:40], hr[10:30, 20:40], bit_depth=8)
    assert scores["test1"] == direct
