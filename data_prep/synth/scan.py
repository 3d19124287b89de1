"""The microscope's two scans of a specimen canvas: where their pixels lie on the
specimen (the truth of a pair), the probe and pixel blur, scan-line jitter and drift,
charging, shot and detector noise, gain and offset; and the SEM data bar under the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.signal import lfilter

from data_prep.synth.canvas import Canvas, smooth_noise
from data_prep.synth.config import SynthConfig


@dataclass(frozen=True)
class Acquisition:
    """One scan: where its pixels lie on the specimen and how it was recorded."""

    to_specimen: np.ndarray  # (2, 3) affine: acquisition pixel (x, y, 1) -> LR pixel
    pixel_lr_px: float  # pixel size in LR pixels (1 for LR, ~1/scale for HR)
    probe_sigma_lr_px: float
    gain: float
    offset: float


def scan_drift(rng: np.random.Generator, height: int, rms_px: float) -> np.ndarray:
    """(height, 2) slow drift of the scan position per line, acquisition px: three random
    sinusoids over the frame per axis, their mean and linear trend removed (a shift and a
    shear, which truth.json's affine map would have to record), scaled to ``rms_px``."""
    t = np.linspace(0.0, 1.0, height)  # (H,) scan time of each line
    k = np.arange(1, 4)  # (3,) cycles per frame
    amplitude = rng.normal(0.0, 1.0, (2, 3)) / k
    phase = rng.uniform(0, 2 * np.pi, (2, 3))
    curve = (amplitude[:, None] * np.sin(2 * np.pi * k * t[:, None] + phase[:, None])).sum(-1)
    trend = np.stack([np.ones_like(t), t], axis=1)  # (H, 2)
    coefficients, *_ = np.linalg.lstsq(trend, curve.T, rcond=None)
    wobble = curve.T - trend @ coefficients  # (H, 2)
    return wobble * (rms_px / np.maximum(wobble.std(axis=0), 1e-12))


_CHARGING_LENGTH_PX = 12.0  # decay of a charging trail along the scan, acquisition px


def charging_trails(signal: np.ndarray, amount: float) -> np.ndarray:
    """Charging: after a bright feature the signal stays raised along the scan line,
    decaying over ``_CHARGING_LENGTH_PX`` (a causal exponential of the excess over the
    median, times ``amount``)."""
    decay = math.exp(-1.0 / _CHARGING_LENGTH_PX)
    excess = np.maximum(signal - np.median(signal), 0)
    trail = lfilter([1 - decay], [1, -decay], excess, axis=1)  # along each scan line
    return signal + np.float32(amount) * trail.astype(np.float32)


def detector_effects(
    recorded: np.ndarray, config: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """Detector and scan electronics: bandwidth (correlated noise) and per-line offsets."""
    if config.bandwidth_px:
        recorded = cv2.GaussianBlur(recorded, (0, 0), config.bandwidth_px)
    if config.line_offset:
        recorded = recorded + rng.normal(0.0, config.line_offset, (recorded.shape[0], 1))
    return recorded


def acquire(
    canvas: Canvas, acq: Acquisition, config: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """Record one acquisition: (height, width) float signal in [0, 1] before quantisation."""
    width, height = config.width, config.height
    # probe and pixel integration (a box of one pixel: variance 1/12) as one Gaussian
    sigma_lr = math.hypot(acq.probe_sigma_lr_px, acq.pixel_lr_px / math.sqrt(12))
    sigma = sigma_lr * canvas.density
    jitter = rng.normal(0.0, config.scan_jitter_px, height).astype(np.float32)  # per scan line
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    u = u + jitter[:, None]
    if config.drift_px:
        drift = scan_drift(rng, height, config.drift_px)  # (H, 2)
        u, v = u + drift[:, :1], v + drift[:, 1:]
    a = acq.to_specimen
    x = canvas.to_canvas(a[0, 0] * u + a[0, 1] * v + a[0, 2])  # (H, W) canvas columns
    y = canvas.to_canvas(a[1, 0] * u + a[1, 1] * v + a[1, 2])  # (H, W) canvas rows
    pad = int(4 * sigma) + 4
    x0, y0 = max(int(x.min()) - pad, 0), max(int(y.min()) - pad, 0)
    x1 = min(int(x.max()) + pad + 1, canvas.image.shape[1])
    y1 = min(int(y.max()) + pad + 1, canvas.image.shape[0])
    window = cv2.GaussianBlur(canvas.image[y0:y1, x0:x1], (0, 0), sigma)
    signal = cv2.remap(
        window,
        (x - x0).astype(np.float32),
        (y - y0).astype(np.float32),
        cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )
    if config.charging:
        signal = charging_trails(signal, config.charging)
    shading = 1 + config.shading * smooth_noise(rng, (height, width), min(width, height) / 2)
    electrons = rng.poisson(np.clip(signal * shading, 0, None) * config.dose) / config.dose
    recorded = electrons + rng.normal(0.0, config.detector_noise, electrons.shape)
    recorded = detector_effects(recorded, config, rng)
    return acq.gain * config.highlight_gain * recorded + acq.offset


def acquisition_pair(config: SynthConfig, rng: np.random.Generator):
    """LR and HR acquisitions of a pair, and the truth of their geometry."""
    s = config.scale
    rotation_deg = float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    scale_error = float(rng.uniform(-config.max_scale_error, config.max_scale_error))
    theta = math.radians(rotation_deg)
    # LR -> HR: p_hr = s (1 + e) R(theta) (p_lr - c) + centre_hr
    lr_to_hr_linear = (
        s
        * (1 + scale_error)
        * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    )
    hr_to_lr_linear = np.linalg.inv(lr_to_hr_linear)
    centre_hr = np.array([(config.width - 1) / 2, (config.height - 1) / 2])
    half = np.abs(hr_to_lr_linear) @ np.array([config.width / 2, config.height / 2])
    keep_out = half + 4.0  # HR field (outer pixel edges) at least 4 LR px inside LR
    low, high = keep_out - 0.5, np.array([config.width, config.height]) - 0.5 - keep_out
    centre_lr = rng.uniform(low, high)
    to_lr = np.hstack([hr_to_lr_linear, (centre_lr - hr_to_lr_linear @ centre_hr)[:, None]])
    lr_to_hr = np.vstack([np.linalg.inv(np.vstack([to_lr, [0, 0, 1]]))[:2], [0, 0, 1]])

    def probe() -> float:
        return config.probe_sigma_lr_px * float(
            np.clip(1 + rng.normal(0, config.focus_jitter), 0.6, 1.6)
        )

    lr = Acquisition(
        np.array([[1.0, 0, 0], [0, 1.0, 0]]),
        1.0,
        probe(),
        float(rng.uniform(0.65, 0.85)),
        float(rng.uniform(0.02, 0.08)),
    )
    hr = Acquisition(
        to_lr,
        1 / (s * (1 + scale_error)),
        probe(),
        float(rng.uniform(0.65, 0.85)),
        float(rng.uniform(0.02, 0.08)),
    )
    truth = {
        "homography": lr_to_hr.tolist(),
        "rotation_deg": rotation_deg,
        "scale_error": scale_error,
        "offset_px": (centre_lr - (np.array([config.width, config.height]) - 1) / 2).tolist(),
        "hr_centre_lr_px": centre_lr.tolist(),
    }
    return lr, hr, truth


def data_bar(config: SynthConfig, magnification: int, pixel_nm: float) -> np.ndarray:
    """An SEM data bar: dark, with white text and a scale bar; (bar_rows, width) in [0, 1]."""
    bar = np.full((config.bar_rows, config.width), 10, np.uint8)  # putText draws on 8 bit
    if config.bar_rows < 8:
        return bar.astype(np.float32) / 255
    font_scale = config.bar_rows / 80 * min(1.0, config.width / 1280) * 0.9
    thickness = max(1, round(2 * font_scale))
    baseline = round(config.bar_rows * 0.62)
    text = f"SE  5.0kV  WD 4.1mm  x{magnification:,}  aeatrain synth"
    cv2.putText(bar, text, (8, baseline), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, thickness)
    bar_nm = 10 ** math.floor(math.log10(config.width * pixel_nm / 4))
    bar_px = round(bar_nm / pixel_nm)
    x1 = config.width - 8
    y = round(config.bar_rows * 0.35)
    cv2.rectangle(bar, (x1 - bar_px, y - 3), (x1, y + 3), 255, -1)
    label = f"{bar_nm / 1000:g} um" if bar_nm >= 1000 else f"{bar_nm:g} nm"
    cv2.putText(
        bar,
        label,
        (x1 - bar_px, baseline + round(config.bar_rows * 0.25)),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale * 0.8,
        255,
        thickness,
    )
    return bar.astype(np.float32) / 255
