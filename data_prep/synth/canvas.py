"""The fine canvas a specimen is rendered on, and the rendering pieces every specimen
family shares: smooth noise, the host texture, wiggly outlines, label images and their
shading (a secondary-electron rim inside each outline, a dark halo outside).

Lengths are in specimen units (LR pixels) unless a name says canvas pixels; the canvas
has ``SynthConfig.canvas_density`` pixels per LR pixel and covers the LR field plus
``CANVAS_MARGIN_LR_PX`` on every side.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data_prep.synth.config import SynthConfig

CANVAS_MARGIN_LR_PX = 8  # canvas beyond the LR field, so blurs see specimen, not padding


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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, roughly unit-std noise of ``shape`` with ``cells`` pixels per correlation."""
    small = (max(2, round(shape[0] / cells) + 2), max(2, round(shape[1] / cells) + 2))
    noise = rng.standard_normal(small).astype(np.float32)
    field = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    probe = field[:: max(1, shape[0] // 97), :: max(1, shape[1] // 97)]  # std on a subsample
    return cv2.subtract(field, float(probe.mean())) * (1.0 / max(float(probe.std()), 1e-6))


def host_texture(spec, rng: np.random.Generator, shape: tuple[int, int], density: float):
    """Host texture of ``spec`` (its ``host_level``, ``host_texture``, ``texture_scale``):
    coarse low-contrast mottling, finer grain and sparse specks; (Hc, Wc) float32.

    The smooth texture is made at half the canvas density (its finest correlation
    length, 0.8 LR px, is still 1.6 pixels there) and enlarged once: half the cost.
    """
    low = (shape[0] // 2 + 1, shape[1] // 2 + 1)
    low_density = density / 2
    texture = smooth_noise(rng, low, spec.texture_scale * low_density) * 0.6
    texture += smooth_noise(rng, low, 2.5 * low_density) * 0.5
    texture += smooth_noise(rng, low, 0.8 * low_density) * 0.35
    texture = cv2.resize(texture, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    host = cv2.addWeighted(texture, spec.host_texture, texture, 0.0, spec.host_level)
    n_specks = int(shape[0] * shape[1] / (density**2) / 150)
    centres = np.round(rng.uniform((0, 0), (shape[1], shape[0]), size=(n_specks, 2)) * 8)
    radii = np.round(rng.uniform(0.4, 1.2, n_specks) * density * 8)
    levels = spec.host_level + rng.normal(0.0, 2.0 * spec.host_texture, n_specks)
    for (x, y), r, level in zip(centres.astype(int), radii.astype(int), levels.tolist()):
        cv2.circle(host, (x, y), r, level, -1, cv2.LINE_8, 3)  # shift 3: 1/8 pixel units
    return host


def blank_canvas(spec, rng: np.random.Generator, config: SynthConfig) -> Canvas:
    """The host texture of ``spec`` over the LR field plus margin, at the canvas density."""
    density = config.canvas_density
    margin = float(CANVAS_MARGIN_LR_PX)
    shape = (
        round((config.height + 2 * margin) * density),
        round((config.width + 2 * margin) * density),
    )
    return Canvas(host_texture(spec, rng, shape, density), density, margin)


def field_bounds(config: SynthConfig, margin: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Low and high corners of the LR field plus margin (specimen units), and its area."""
    low = np.array([-margin, -margin])
    high = np.array([config.width + margin, config.height + margin])
    return low, high, float(np.prod(high - low))


def outlines(spec, rng: np.random.Generator, centres, radii, vertices: int = 28):
    """Wiggly closed outlines (``spec.wiggle``) around ``centres`` (P, 2) of ``radii`` (P,):
    (P, vertices, 2) specimen coordinates."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)  # (V,)
    harmonics = np.arange(2, 6)  # (K,)
    amplitude = rng.normal(0.0, spec.wiggle, (len(radii), harmonics.size)) * 2 / harmonics
    phase = rng.uniform(0, 2 * np.pi, (len(radii), harmonics.size))
    waves = np.cos(theta[None, :, None] * harmonics + phase[:, None, :])  # (P, V, K)
    r = radii[:, None] * (1 + (amplitude[:, None, :] * waves).sum(axis=2))  # (P, V)
    offsets = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=2)  # (P, V, 2)
    return centres[:, None, :] + offsets


def label_edges(labels: np.ndarray) -> np.ndarray:
    """uint8 image, 0 where a pixel's label differs from a 4-neighbour's, 255 elsewhere."""
    edge = np.zeros(labels.shape, bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return np.where(edge, np.uint8(0), np.uint8(255))


def fill_polygons(shape: tuple[int, int], canvas: Canvas, polygons: np.ndarray) -> np.ndarray:
    """Label image (int32, 0 = none) of ``polygons`` (P, V, 2) in specimen units; later
    polygons on top."""
    vertices = np.round(canvas.to_canvas(polygons) * 8).astype(np.int32)  # shift 3
    labels = np.zeros(shape, np.int32)
    for index, polygon in enumerate(vertices, start=1):
        cv2.fillPoly(labels, [polygon], index, cv2.LINE_8, 3)
    return labels


def shade_objects(
    canvas: Canvas,
    labels: np.ndarray,
    levels: np.ndarray,
    *,
    rim_gain: float,
    rim_width: float,
    halo: float,
    halo_width: float,
) -> np.ndarray:
    """Objects of ``labels`` at ``levels[label]`` over the host, an exponential bright rim
    inside every outline (``rim_gain``, ``rim_width`` LR px) and a dark halo outside
    (``halo``, ``halo_width`` LR px)."""
    density = canvas.density
    inside = labels > 0
    objects = levels.astype(np.float32)[labels]  # (Hc, Wc) gather: every pixel's level
    distance = cv2.distanceTransform(label_edges(labels), cv2.DIST_L2, 3)  # canvas px
    rim = cv2.exp(distance * np.float32(-1 / (rim_width * density)))
    objects += rim * np.float32(rim_gain)
    host = canvas.image
    if halo:
        host = host - cv2.exp(distance * np.float32(-1 / (halo_width * density))) * np.float32(halo)
    return np.where(inside, objects, host)


def shaded_specimen(
    system,
    canvas: Canvas,
    labels: np.ndarray,
    levels: np.ndarray,
    contrast: float,
    config: SynthConfig,
) -> Canvas:
    """``labels`` shaded with ``system``'s rim and halo (``shade_objects``) over the host,
    scaled to the acquisition contrast: the last step of every object family's render."""
    signal = shade_objects(
        canvas,
        labels,
        levels,
        rim_gain=system.rim_gain * config.edge_brightening,
        rim_width=system.rim_width,
        halo=system.halo * contrast,
        halo_width=system.halo_width,
    )
    return Canvas(with_contrast(signal, system.host_level, config), canvas.density, canvas.margin)


def with_contrast(signal: np.ndarray, host_level: float, config: SynthConfig) -> np.ndarray:
    """``signal`` with its contrast about ``host_level`` scaled by ``config.contrast``."""
    if config.contrast == 1.0:
        return signal
    return (host_level + config.contrast * (signal - host_level)).astype(np.float32)
