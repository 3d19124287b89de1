"""Registration against the generator's truth, and every way a pair gets rejected."""

import cv2
import numpy as np
import pytest

from data_prep.registration import (
    RegistrationConfig,
    apply_homography,
    corner_error,
    register,
    resample_matrix,
)
from data_prep.synth.config import SynthConfig
from data_prep.synth.families import draw_aggregates
from data_prep.synth.generate import make_pair

SMALL = SynthConfig(width=512, height=384, bar_rows=0)


def _pair(config=SMALL, seed=21, index=0):
    spec = draw_aggregates(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))
    lr, hr, truth = make_pair(config, spec, seed, index)
    return lr, hr, np.array(truth["homography"])


def _error(result, truth, shape):
    assert result.ok, result.reason
    return corner_error(truth, result.homography, (shape[1], shape[0]))


# --- geometry conventions ----------------------------------------------------------------


def test_resample_matrix_matches_cv2_resize_pixel_centres():
    ramp = np.tile(np.arange(64, dtype=np.float32), (8, 1))  # value = x
    half = cv2.resize(ramp, (32, 4), interpolation=cv2.INTER_AREA)
    big_x = apply_homography(np.linalg.inv(resample_matrix(2, 2)), np.array([[5.0, 1.0]]))[0, 0]
    assert half[1, 5] == pytest.approx(big_x)  # 2 * 5 + 0.5
    third = cv2.resize(ramp, None, fx=1 / 4, fy=1 / 4, interpolation=cv2.INTER_AREA)
    big_x = apply_homography(np.linalg.inv(resample_matrix(4, 4)), np.array([[3.0, 0.0]]))[0, 0]
    assert third[0, 3] == pytest.approx(big_x)


def test_corner_error_definition():
    truth = np.array([[2.0, 0, -100], [0, 2.0, -50], [0, 0, 1]])
    assert corner_error(truth, truth, (640, 480)) == pytest.approx(0, abs=1e-9)
    shifted = np.array([[1, 0, 0.3], [0, 1, -0.4], [0, 0, 1.0]]) @ truth
    assert corner_error(truth, shifted, (640, 480)) == pytest.approx(0.5)
    rotated = np.array([[1, -1e-3, 0], [1e-3, 1, 0], [0, 0, 1.0]]) @ truth  # about (0, 0)
    assert corner_error(truth, rotated, (640, 480)) == pytest.approx(1e-3 * np.hypot(639, 479))


# --- accuracy against truth --------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "config", "seed"),
    [
        ("8-bit", SMALL, 21),
        ("16-bit", SynthConfig(width=512, height=384, bar_rows=0, bit_depth=16), 22),
        # noise-limited: small noisy pairs err 0.3-0.7 px, so this one is full size
        ("noisy, low contrast, full size", SynthConfig(bar_rows=0, dose=15, contrast=0.5), 23),
        ("strong charging", SynthConfig(width=512, height=384, bar_rows=0, shading=0.3), 24),
        ("scale 3", SynthConfig(width=768, height=576, bar_rows=0, scale=3.0), 25),
    ],
)
def test_corner_error_within_half_a_pixel(label, config, seed):
    lr, hr, truth = _pair(config, seed)
    result = register(lr, hr, config.scale)
    error = _error(result, truth, hr.shape)
    print(
        f"{label}: corner error {error:.3f} HR px, ncc {result.ncc:.3f}, "
        f"inliers {result.inliers}/{result.matches}"
    )
    assert error <= 0.5
    assert result.coarse == "features" and result.inliers >= RegistrationConfig().min_inliers
    assert result.scale == pytest.approx(config.scale, rel=0.02)


def test_correlation_start_when_features_fail():
    lr, hr, truth = _pair(seed=26)
    no_features = RegistrationConfig(min_inliers=10**6)
    result = register(lr, hr, 2.0, no_features)
    assert result.coarse == "correlation"
    assert _error(result, truth, hr.shape) <= 0.5


def test_published_recipe_alone_misses_by_pixels():
    """Why the prior and the refinement: 500 ORB features, best 15% of the matches,
    RANSAC homography (the published recipe) lands far from the truth here."""
    lr, hr, truth = _pair(seed=27)
    orb = cv2.ORB_create(500)
    kp_lr, d_lr = orb.detectAndCompute(lr, None)
    kp_hr, d_hr = orb.detectAndCompute(hr, None)
    matches = sorted(
        cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d_lr, d_hr), key=lambda m: m.distance
    )
    best = matches[: max(4, int(len(matches) * 0.15))]
    src = np.float32([kp_lr[m.queryIdx].pt for m in best])
    dst = np.float32([kp_hr[m.trainIdx].pt for m in best])
    published, _ = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    ours = _error(register(lr, hr, 2.0), truth, hr.shape)
    theirs = np.inf if published is None else corner_error(truth, published, (512, 384))
    print(f"published recipe {theirs:.2f} px, ours {ours:.3f} px")
    assert theirs > 1.0 > ours


# --- rejections --------------------------------------------------------------------------


def test_featureless_pair_is_rejected():
    rng = np.random.default_rng(0)
    lr = np.clip(rng.normal(120, 4, (384, 512)), 0, 255).astype(np.uint8)
    hr = np.clip(rng.normal(120, 4, (384, 512)), 0, 255).astype(np.uint8)
    result = register(lr, hr, 2.0)
    assert not result.ok
    assert "matches" in result.reason  # features found nothing consistent
    assert "correlation search failed too" in result.reason


def test_unrelated_pair_is_rejected():
    lr, _, _ = _pair(seed=28, index=0)
    _, hr, _ = _pair(seed=29, index=1)
    result = register(lr, hr, 2.0)
    assert not result.ok
    assert "consistent matches" in result.reason or "low correlation" in result.reason


def test_scale_far_from_the_magnification_ratio_is_rejected():
    lr, hr, _ = _pair(seed=30)
    result = register(lr, hr, 1.5)  # file names claim 1.5, the images are 2x apart
    assert not result.ok
    assert "scale" in result.reason


def test_hr_field_not_inside_lr_is_rejected():
    lr, hr, truth = _pair(seed=31)
    corners = apply_homography(np.linalg.inv(truth), np.array([[0, 0], [511, 383.0]]))
    cut = int(corners[0, 0]) + 30  # LR loses the columns under HR's left 30 LR px
    result = register(np.ascontiguousarray(lr[:, cut:]), hr, 2.0)
    assert not result.ok
    assert "not inside LR" in result.reason


def test_too_small_images_are_rejected():
    result = register(np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8), 2.0)
    assert not result.ok and "too small" in result.reason
    result = register(np.zeros((100, 100), np.uint8), np.zeros((400, 400), np.uint8), 2.0)
    assert not result.ok and "larger than" in result.reason
