"""Synthetic SEM image pairs in the public dataset's layout, with their true registration.

Why: the paper's 22 pairs are not ours to ship, yet every stage must run and be tested on
any machine. The generator is physically motivated so that registration meets the same
difficulties as on real pairs and a network has real work to do (the HR holds detail the
LR lost, under its own noise):

- one specimen model per run (a material system: nanoparticle clusters on a host),
  varied per pair, so pooled training has common features to learn;
- the specimen of a pair is rendered once on a fine canvas (``2 * scale`` canvas pixels
  per LR pixel, i.e. twice the HR pixel density) covering the LR field;
- each acquisition (LR at magnification M, HR at ``scale * M``) blurs the canvas with its
  own probe (Gaussian, sigma fixed in specimen units, focus jitter per acquisition) and
  its pixel integration, then samples it at its own pixel centres with ``cv2.remap``:
  the affine map from HR pixels to LR pixels is exact by construction, and it is what
  ``truth.json`` records (as the LR->HR homography);
- then scan-line jitter (random shifts of each scan line), a slow brightness variation
  (charging), Poisson shot noise, detector noise, gain and offset, quantisation;
- an SEM data bar under the image area with high-contrast text and a scale bar, which
  the build must cut off.

Specimen units are LR pixels (at magnification M): LR pixel ``(x, y)`` has its centre at
specimen point ``(x, y)`` (OpenCV pixel-centre convention, docs/formats.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.signal import lfilter

from aeatrain.data.format import read_document
from aeatrain.errors import UserError
from aeatrain.files.images import encode_image, from_float
from aeatrain.files.microscope import fei_tag_text, zeiss_tag_text
from aeatrain.files.outputs import SYNTH_RAW, nearest_existing
from data_prep.outdir import check_target, staged_output
from data_prep.parallel import parallel_map
from data_prep.registration import Homography

log = logging.getLogger(__name__)

GENERATOR = "aeatrain.synth"
VERSION = 1
TRUTH_JSON = "truth.json"
# format -> (suffix, bit depth, vendor tags): fei-tif and zeiss-tif carry the metadata
# those microscopes write (aeatrain/files/microscope.py), LZW-compressed like Fiji's TIFFs
FORMATS = {
    "bmp": (".bmp", 8, None),
    "tif16": (".tif", 16, None),
    "fei-tif": (".tif", 16, "fei"),
    "zeiss-tif": (".tif", 16, "zeiss"),
}
_CANVAS_MARGIN_LR_PX = 8  # canvas beyond the LR field, so blurs see specimen, not padding
# peak memory of rendering one pair, per canvas pixel: 25-30 bytes measured at 640 x 480
# to 2560 x 1888 (float32 canvas, labels, distances, rims, the blurred windows)
_BYTES_PER_CANVAS_PX = 32
_NM_PER_LR_PX = 10.0  # LR pixel size written on the data bar (12.8 um field at 1280 px)


@dataclass(frozen=True)
class SynthConfig:
    """What is imaged and how; the defaults match the public dataset's pairs."""

    width: int = 1280  # image area of both acquisitions, pixels
    height: int = 944
    bar_rows: int = 80  # SEM data bar under the image area
    scale: float = 2.0  # HR magnification / LR magnification
    lr_magnification: int = 10000
    bit_depth: int = 8
    max_rotation_deg: float = 1.5  # HR scan rotation relative to LR, uniform in +-this
    max_scale_error: float = 0.01  # magnification calibration error, uniform in +-this
    probe_sigma_lr_px: float = 0.2  # Gaussian probe sigma, specimen units (LR pixels)
    focus_jitter: float = 0.12  # relative spread of the probe sigma per acquisition
    dose: float = 60.0  # mean detected electrons per pixel at unit signal
    detector_noise: float = 0.015  # Gaussian read-out noise, fraction of full scale
    scan_jitter_px: float = 0.12  # std of per-scan-line shifts, acquisition pixels
    shading: float = 0.06  # amplitude of slow brightness variation (charging)
    contrast: float = 1.0  # multiplier on the specimen's contrast
    # acquisition effects of real SEMs, off by default (the realistic preset sets them)
    bandwidth_px: float = 0.0  # detector/scan bandwidth: Gaussian sigma on the recording, px
    line_offset: float = 0.0  # std of a brightness offset per scan line, fraction of full scale
    drift_px: float = 0.0  # RMS of slow drift of the scan position within a frame, px
    highlight_gain: float = 1.0  # extra detector gain; > 1 clips the brightest pixels
    charging: float = 0.0  # bright trails after bright features along the scan
    edge_brightening: float = 1.0  # multiplier on the specimen's secondary-electron edge rims

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise UserError(f"--width/--height: image area {self.width}x{self.height} < 64x64")
        if not 1.25 <= self.scale <= 8:
            raise UserError(f"--scale: {self.scale} outside [1.25, 8]")
        if self.bit_depth not in (8, 16):
            raise UserError(f"bit depth {self.bit_depth}: expected 8 or 16")
        if self.bar_rows < 0:
            raise UserError(f"bar rows {self.bar_rows} < 0")
        if not (self.dose > 0 and math.isfinite(self.dose)):
            raise UserError(f"--dose: {self.dose} must be a positive number of electrons")
        for name in ("bandwidth_px", "line_offset", "drift_px", "charging", "edge_brightening"):
            if not 0 <= getattr(self, name) < 100:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag}: {getattr(self, name)} outside [0, 100)")
        if not 0 < self.highlight_gain < 100:
            raise UserError(f"--highlight-gain: {self.highlight_gain} outside (0, 100)")

    @property
    def hr_magnification(self) -> int:
        return round(self.lr_magnification * self.scale)

    @property
    def canvas_density(self) -> float:
        """Canvas pixels per LR pixel: twice the HR pixel density."""
        return 2.0 * self.scale


# Presets: SynthConfig values and the specimen family. ``default`` is the generator as it
# was first written (byte for byte); ``realistic`` matches the statistics of real SEM
# tiles (docs/data_prep.md, "Measured statistics").
PRESETS: dict[str, dict] = {
    "default": {},
    "realistic": {
        "dose": 24.0,
        "shading": 0.045,
        "bandwidth_px": 0.75,
        "line_offset": 0.004,
        "highlight_gain": 1.6,
    },
}
PRESET_FAMILY = {"default": "aggregates", "realistic": "clusters"}


def preset_config(preset: str, **overrides) -> SynthConfig:
    """``SynthConfig`` of ``preset``; ``overrides`` (None values ignored) win."""
    if preset not in PRESETS:
        raise UserError(f"--preset: {preset!r}; expected one of {', '.join(PRESETS)}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return SynthConfig(**{**PRESETS[preset], **chosen})


@dataclass(frozen=True)
class Specimen:
    """One material system, shared by every pair of a run; lengths in LR pixels."""

    family: ClassVar[str] = "aggregates"

    particle_radius: float  # median radius of the primary particles
    radius_spread: float  # log-normal sigma of the radii
    particles_per_cluster: float
    clusters_per_kpx: float  # clusters per 1000 LR px^2
    wiggle: float  # relative amplitude of outline harmonics
    host_level: float  # mean secondary-electron signal of the host
    host_texture: float  # std of the host texture
    texture_scale: float  # correlation length of the coarse host texture
    particle_level: float
    particle_level_spread: float
    rim_gain: float  # secondary-electron edge brightening
    rim_width: float
    halo: float  # darkening of the host next to particles

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas:
        return render_specimen(self, rng, config)


def draw_specimen(rng: np.random.Generator) -> Specimen:
    """A random material system: small bright particles aggregated into clusters."""
    return Specimen(
        particle_radius=float(rng.uniform(2.0, 3.5)),
        radius_spread=float(rng.uniform(0.2, 0.35)),
        particles_per_cluster=float(rng.uniform(8, 20)),
        clusters_per_kpx=float(rng.uniform(0.25, 0.5)),
        wiggle=float(rng.uniform(0.05, 0.12)),
        host_level=float(rng.uniform(0.25, 0.35)),
        host_texture=float(rng.uniform(0.03, 0.05)),
        texture_scale=float(rng.uniform(6, 14)),
        particle_level=float(rng.uniform(0.55, 0.7)),
        particle_level_spread=float(rng.uniform(0.03, 0.07)),
        rim_gain=float(rng.uniform(0.25, 0.4)),
        rim_width=float(rng.uniform(0.4, 0.7)),
        halo=float(rng.uniform(0.03, 0.07)),
    )


@dataclass(frozen=True)
class Canvas:
    """The specimen sampled on a fine grid: ``image[j, i]`` is specimen point
    ``((i + 0.5) / density - 0.5 - margin, (j + 0.5) / density - 0.5 - margin)``."""

    image: np.ndarray  # (Hc, Wc) float32, secondary-electron signal
    density: float  # canvas pixels per LR pixel
    margin: float  # LR pixels of canvas beyond the LR field on every side

    def to_canvas(self, specimen_xy: np.ndarray) -> np.ndarray:
        """Specimen (LR pixel) coordinates -> canvas pixel coordinates."""
        return self.density * (specimen_xy + 0.5 + self.margin) - 0.5


# --- the specimen ------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, roughly unit-std noise of ``shape`` with ``cells`` pixels per correlation."""
    small = (max(2, round(shape[0] / cells) + 2), max(2, round(shape[1] / cells) + 2))
    noise = rng.standard_normal(small).astype(np.float32)
    field = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    probe = field[:: max(1, shape[0] // 97), :: max(1, shape[1] // 97)]  # std on a subsample
    return cv2.subtract(field, float(probe.mean())) * (1.0 / max(float(probe.std()), 1e-6))


def _host(spec: Specimen, rng: np.random.Generator, shape: tuple[int, int], density: float):
    """Host texture: coarse low-contrast mottling, finer grain and sparse specks.

    The smooth texture is made at half the canvas density (its finest correlation
    length, 0.8 LR px, is still 1.6 pixels there) and enlarged once: half the cost.
    """
    low = (shape[0] // 2 + 1, shape[1] // 2 + 1)
    low_density = density / 2
    texture = _smooth_noise(rng, low, spec.texture_scale * low_density) * 0.6
    texture += _smooth_noise(rng, low, 2.5 * low_density) * 0.5
    texture += _smooth_noise(rng, low, 0.8 * low_density) * 0.35
    texture = cv2.resize(texture, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    host = cv2.addWeighted(texture, spec.host_texture, texture, 0.0, spec.host_level)
    n_specks = int(shape[0] * shape[1] / (density**2) / 150)
    centres = np.round(rng.uniform((0, 0), (shape[1], shape[0]), size=(n_specks, 2)) * 8)
    radii = np.round(rng.uniform(0.4, 1.2, n_specks) * density * 8)
    levels = spec.host_level + rng.normal(0.0, 2.0 * spec.host_texture, n_specks)
    for (x, y), r, level in zip(centres.astype(int), radii.astype(int), levels.tolist()):
        cv2.circle(host, (x, y), r, level, -1, cv2.LINE_8, 3)  # shift 3: 1/8 pixel units
    return host


def _particles(spec: Specimen, rng: np.random.Generator, config: SynthConfig, margin: float):
    """Centres (P, 2) and radii (P,) in LR px of all particles: clusters grown by random
    aggregation (each new particle touches a random earlier one of its cluster)."""
    width_lr, height_lr = config.width + 2 * margin, config.height + 2 * margin
    n_clusters = rng.poisson(spec.clusters_per_kpx * width_lr * height_lr / 1000)
    counts = 1 + rng.poisson(spec.particles_per_cluster - 1, n_clusters)
    radii = spec.particle_radius * np.exp(rng.normal(0.0, spec.radius_spread, counts.sum()))
    starts = rng.uniform(
        (-margin, -margin), (config.width + margin, config.height + margin), size=(n_clusters, 2)
    )
    angles = rng.uniform(0, 2 * np.pi, counts.sum())
    reach = rng.uniform(0.7, 1.0, counts.sum())
    pick = rng.random(counts.sum())
    centres = np.empty((counts.sum(), 2))
    first = 0
    for start, count in zip(starts, counts):
        centres[first] = start
        for k in range(first + 1, first + count):
            anchor = first + int(pick[k] * (k - first))
            step = (radii[anchor] + radii[k]) * reach[k]
            centres[k] = centres[anchor] + step * np.array([np.cos(angles[k]), np.sin(angles[k])])
        first += count
    return centres, radii


def _outlines(spec: Specimen, rng: np.random.Generator, centres, radii, vertices: int = 28):
    """Wiggly closed outlines: (P, vertices, 2) specimen coordinates."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)  # (V,)
    harmonics = np.arange(2, 6)  # (K,)
    amplitude = rng.normal(0.0, spec.wiggle, (len(radii), harmonics.size)) * 2 / harmonics
    phase = rng.uniform(0, 2 * np.pi, (len(radii), harmonics.size))
    waves = np.cos(theta[None, :, None] * harmonics + phase[:, None, :])  # (P, V, K)
    r = radii[:, None] * (1 + (amplitude[:, None, :] * waves).sum(axis=2))  # (P, V)
    offsets = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=2)  # (P, V, 2)
    return centres[:, None, :] + offsets


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """uint8 image, 0 where a pixel's label differs from a 4-neighbour's, 255 elsewhere."""
    edge = np.zeros(labels.shape, bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return np.where(edge, np.uint8(0), np.uint8(255))


def render_specimen(spec: Specimen, rng: np.random.Generator, config: SynthConfig) -> Canvas:
    """Render one pair's specimen over the LR field (plus margin) on the fine canvas.

    Particles are drawn into a label image (later particles on top), so the outline of
    every visible particle, inside an aggregate too, gets its secondary-electron rim.
    """
    density = config.canvas_density
    margin = float(_CANVAS_MARGIN_LR_PX)
    shape = (
        round((config.height + 2 * margin) * density),
        round((config.width + 2 * margin) * density),
    )
    canvas = Canvas(_host(spec, rng, shape, density), density, margin)
    centres, radii = _particles(spec, rng, config, margin)
    polygons = np.round(canvas.to_canvas(_outlines(spec, rng, centres, radii)) * 8)
    polygons = polygons.astype(np.int32)  # (P, V, 2) in 1/8 canvas pixel (shift=3)
    labels = np.zeros(shape, np.int32)
    for index, polygon in enumerate(polygons, start=1):
        cv2.fillPoly(labels, [polygon], index, cv2.LINE_8, 3)
    levels = spec.particle_level + rng.normal(0.0, spec.particle_level_spread, len(radii) + 1)
    inside = labels > 0
    signal = canvas.image
    signal[inside] = levels.astype(np.float32)[labels[inside]]
    distance = cv2.distanceTransform(_label_edges(labels), cv2.DIST_L2, 3)  # canvas px
    rim = cv2.exp(distance * np.float32(-1 / (spec.rim_width * density)))  # (Hc, Wc)
    rim_gain = spec.rim_gain * config.edge_brightening
    weight = np.where(inside, np.float32(rim_gain), np.float32(-spec.halo))
    signal += rim * weight
    if config.contrast != 1.0:
        signal = spec.host_level + config.contrast * (signal - spec.host_level)
    return replace(canvas, image=signal.astype(np.float32, copy=False))


# --- acquisitions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Acquisition:
    """One scan: where its pixels lie on the specimen and how it was recorded."""

    to_specimen: np.ndarray  # (2, 3) affine: acquisition pixel (x, y, 1) -> LR pixel
    pixel_lr_px: float  # pixel size in LR pixels (1 for LR, ~1/scale for HR)
    probe_sigma_lr_px: float
    gain: float
    offset: float


def _drift(rng: np.random.Generator, height: int, rms_px: float) -> np.ndarray:
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


def _charging_trails(signal: np.ndarray, amount: float) -> np.ndarray:
    """Charging: after a bright feature the signal stays raised along the scan line,
    decaying over ``_CHARGING_LENGTH_PX`` (a causal exponential of the excess over the
    median, times ``amount``)."""
    decay = math.exp(-1.0 / _CHARGING_LENGTH_PX)
    excess = np.maximum(signal - np.median(signal), 0)
    trail = lfilter([1 - decay], [1, -decay], excess, axis=1)  # along each scan line
    return signal + np.float32(amount) * trail.astype(np.float32)


def _detector_effects(
    recorded: np.ndarray, config: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """Detector and scan electronics: bandwidth (correlated noise) and per-line offsets."""
    if config.bandwidth_px:
        recorded = cv2.GaussianBlur(recorded, (0, 0), config.bandwidth_px)
    if config.line_offset:
        recorded = recorded + rng.normal(0.0, config.line_offset, (recorded.shape[0], 1))
    return recorded


def _acquire(
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
        drift = _drift(rng, height, config.drift_px)  # (H, 2)
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
        signal = _charging_trails(signal, config.charging)
    shading = 1 + config.shading * _smooth_noise(rng, (height, width), min(width, height) / 2)
    electrons = rng.poisson(np.clip(signal * shading, 0, None) * config.dose) / config.dose
    recorded = electrons + rng.normal(0.0, config.detector_noise, electrons.shape)
    recorded = _detector_effects(recorded, config, rng)
    return acq.gain * config.highlight_gain * recorded + acq.offset


def _acquisition_pair(config: SynthConfig, rng: np.random.Generator):
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


# --- data bar and files ------------------------------------------------------------------


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


def pair_name(index: int) -> str:
    return f"syn{index:03d}"


class SpecimenModel(Protocol):
    """A material system drawn once per run (``Specimen``, or a ``data_prep.families`` one)."""

    family: str  # the --family name, recorded in truth.json

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas: ...


def make_pair(
    config: SynthConfig, spec: SpecimenModel, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One pair: (lr, hr) full files as (height + bar_rows, width) arrays, and its truth.

    Deterministic in (config, spec, seed, index): pair ``i`` is the same whatever the
    number of pairs or workers.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index + 1,)))
    lr_acq, hr_acq, truth = _acquisition_pair(config, rng)
    canvas = spec.render(rng, config)
    images = []
    for acq, mag in ((lr_acq, config.lr_magnification), (hr_acq, config.hr_magnification)):
        area = _acquire(canvas, acq, config, rng)
        bar = data_bar(config, mag, _NM_PER_LR_PX * acq.pixel_lr_px)
        images.append(from_float(np.vstack([area, bar]), config.bit_depth))
    return images[0], images[1], truth


def vendor_tags(vendor: str | None, config: SynthConfig, magnification: int) -> list:
    """tifffile ``extratags`` with the metadata an FEI or Zeiss SEM would write: the
    nominal pixel size (10 nm at the LR magnification), and for FEI the data-bar row."""
    if vendor is None:
        return []
    pixel_nm = _NM_PER_LR_PX * config.lr_magnification / magnification
    if vendor == "fei":
        text = fei_tag_text(
            pixel_nm,
            bar_row=config.height,
            width=config.width,
            hv_kv=5.0,
            detector="ETD",
            system="aeatrain synth",
        )
        return [(34682, "s", 0, text, True)]  # FEI_HELIOS
    text = zeiss_tag_text(
        pixel_nm, width=config.width, magnification=magnification, hv_kv=5.0, detector="SE2"
    )
    return [(34118, "s", 0, text, True)]  # CZ_SEM


def _write_pair(job: tuple) -> tuple[str, dict]:
    """Worker: make pair ``index`` and write its two files into ``out``."""
    config, spec, seed, index, out, image_format = job
    suffix, _, vendor = FORMATS[image_format]
    lr, hr, truth = make_pair(config, spec, seed, index)
    name = pair_name(index)
    files = {}
    for key, image, mag in (
        ("lr_file", lr, config.lr_magnification),
        ("hr_file", hr, config.hr_magnification),
    ):
        files[key] = f"{name}_{mag}{suffix}"
        tags = vendor_tags(vendor, config, mag)
        data = encode_image(image, suffix, extratags=tags, compression="lzw" if vendor else None)
        # plain writes: the whole folder is staged and renamed (and keeps the umask's mode)
        (Path(out) / files[key]).write_bytes(data)
    return name, {**files, **truth}


def _available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None: not checked."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def check_fits(out: Path, pairs: int, config: SynthConfig, image_format: str, workers: int):
    """Refuse, before any work, a run that cannot fit: the pairs rendered at once need
    more memory than is available, or the files more disk than is free beside ``out``."""
    gib = 2**30
    margin = 2 * _CANVAS_MARGIN_LR_PX
    canvas_px = (config.width + margin) * (config.height + margin) * config.canvas_density**2
    per_pair = canvas_px * _BYTES_PER_CANVAS_PX
    available = _available_memory_bytes()
    size = f"{config.width}x{config.height} at scale {config.scale:g}"
    if available is not None and per_pair > available:
        raise UserError(
            f"--width/--height {size}: rendering one pair needs about {per_pair / gib:.1f} GiB "
            f"of memory, {available / gib:.1f} GiB is available; choose a smaller image area"
        )
    at_once = min(workers, pairs)
    if available is not None and per_pair * at_once > available:
        raise UserError(
            f"--workers {workers}: {at_once} pairs of {size} rendered at once need about "
            f"{per_pair * at_once / gib:.1f} GiB of memory, {available / gib:.1f} GiB is "
            f"available; use --workers {max(1, int(available // per_pair))}"
        )
    _, bit_depth, _ = FORMATS[image_format]
    disk = pairs * 2 * config.width * (config.height + config.bar_rows) * bit_depth // 8
    free = shutil.disk_usage(nearest_existing(out)).free
    if disk > free:
        raise UserError(
            f"{out}: --pairs {pairs} of {config.width}x{config.height + config.bar_rows} "
            f"pixels need up to {disk / gib:.1f} GiB of disk, {free / gib:.1f} GiB is free "
            "there; use fewer --pairs or a smaller image area"
        )


def synthesize(
    out: str | os.PathLike,
    *,
    pairs: int,
    seed: int,
    config: SynthConfig | None = None,
    draw: Callable[[np.random.Generator], SpecimenModel] = draw_specimen,
    image_format: str = "bmp",
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write ``pairs`` synthetic pairs and ``truth.json`` into ``out``; returns the truth.

    ``draw`` draws the run's material system (``data_prep.families.FAMILIES`` has one per
    ``--family``). The folder appears complete or not at all (staged beside it, then
    renamed). A run that cannot fit in memory or on disk is refused first (check_fits).
    """
    if pairs < 1:
        raise UserError(f"--pairs: {pairs} < 1")
    if image_format not in FORMATS:
        raise UserError(f"--format: {image_format!r}; expected one of {', '.join(FORMATS)}")
    _, bit_depth, _ = FORMATS[image_format]
    config = replace(config or SynthConfig(), bit_depth=bit_depth)
    out = Path(out)
    check_fits(out, pairs, config, image_format, workers)
    check_target(out, SYNTH_RAW, overwrite=overwrite)
    spec = draw(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))
    with staged_output(out, SYNTH_RAW, overwrite=overwrite) as staging:
        jobs = [(config, spec, seed, i, staging, image_format) for i in range(pairs)]
        results = parallel_map(_write_pair, jobs, workers=workers, desc="synth")
        truth = {
            "generator": GENERATOR,
            "version": VERSION,
            "seed": seed,
            "scale": config.scale,
            "bar_row": config.height,
            "config": asdict(config),
            "family": spec.family,
            "specimen": asdict(spec),
            "pairs": dict(results),
        }
        Truth.model_validate(truth)  # the writer cannot drift from the reader
        text = json.dumps(truth, indent=2) + "\n"
        (staging / TRUTH_JSON).write_text(text, encoding="utf-8")
    return truth


class TruthPair(BaseModel):
    """One pair of ``truth.json``: its two files and the true LR->HR homography (the
    rotation, scale error and offsets that made it are kept as further keys)."""

    model_config = ConfigDict(extra="allow")

    lr_file: str
    hr_file: str
    homography: Homography


class Truth(BaseModel):
    """``RAW/truth.json`` of ``data_prep synth`` (docs/formats.md): how the folder was
    made (generator, seed, config, specimen as further keys) and each pair's truth."""

    model_config = ConfigDict(extra="allow")

    generator: Literal["aeatrain.synth"]
    version: int
    seed: int
    scale: float
    bar_row: int  # the images' height: the data bar starts here
    family: str | None = None  # None: written before the families
    pairs: dict[str, TruthPair]


def read_truth(raw: str | Path) -> Truth:
    """``raw/truth.json`` checked; UserError naming the file and the field."""
    return read_document(Path(raw) / TRUTH_JSON, Truth, "a truth.json of data_prep synth")
