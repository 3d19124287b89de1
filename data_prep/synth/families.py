"""Specimen families for ``data_prep synth --family``: what the microscope looks at.

Each family is a small frozen dataclass of one run's material system, drawn once per run
by its ``draw_*`` function, whose ``render(rng, config)`` returns the specimen of one pair
on the fine canvas (data_prep/synth/canvas.py: same geometry for all, so every
acquisition effect and the truth apply unchanged):

- ``aggregates``: large compact clusters of round particles; the default preset's
  specimen, the generator as first written (byte for byte);
- ``clusters``: small particles in clusters of heavy-tailed (log-normal) size, grown at
  their periphery in outward strands, so they are rough; the realistic preset's specimen
  (docs/data_prep.md, measured statistics);
- ``bimodal``: the same clusters of small particles plus isolated large ones;
- ``dispersed``: isolated particles of narrow size, hardly touching;
- ``grains``: a polycrystal, Voronoi grains of their own brightness (channelling
  contrast) with dark grooves at the boundaries and small precipitates;
- ``fibres``: overlapping curved fibres (nanowires) of log-normal length;
- ``porous``: a bright film with dark pores of log-normal size.

All lengths are in LR pixels (specimen units); signal levels are the secondary-electron
yield before gain. Every family has a host texture (``canvas.host_texture``) and
secondary-electron edge brightening on its outlines, scaled by the acquisition's
``edge_brightening``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import cv2
import numpy as np

from data_prep.synth.canvas import (
    Canvas,
    blank_canvas,
    field_bounds,
    fill_polygons,
    label_edges,
    outlines,
    shade_objects,
    shaded_specimen,
    with_contrast,
)
from data_prep.synth.config import SynthConfig

_MAX_CLUSTER_PARTICLES = 400  # cap on the log-normal tail: one cluster, not a film


class SpecimenModel(Protocol):
    """A material system drawn once per run (one of :data:`FAMILIES`)."""

    family: str  # the --family name, recorded in truth.json

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas: ...


# --- aggregates --------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregateSystem:
    """Bright nanoparticles aggregated into large compact clusters on a host."""

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
        """Particles drawn into a label image (later particles on top), so the outline of
        every visible particle, inside an aggregate too, gets its secondary-electron rim;
        the host darkens over the rim's width around them."""
        canvas = blank_canvas(self, rng, config)
        centres, radii = _aggregate_particles(self, rng, config, canvas.margin)
        labels = fill_polygons(canvas.image.shape, canvas, outlines(self, rng, centres, radii))
        levels = self.particle_level + rng.normal(0.0, self.particle_level_spread, len(radii) + 1)
        signal = shade_objects(
            canvas,
            labels,
            levels,
            rim_gain=self.rim_gain * config.edge_brightening,
            rim_width=self.rim_width,
            halo=self.halo,
            halo_width=self.rim_width,
        )
        return Canvas(with_contrast(signal, self.host_level, config), canvas.density, canvas.margin)


def _aggregate_particles(
    spec: AggregateSystem, rng: np.random.Generator, config: SynthConfig, margin: float
):
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


def draw_aggregates(rng: np.random.Generator) -> AggregateSystem:
    """A random material system: small bright particles aggregated into clusters."""
    return AggregateSystem(
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


# --- clusters of particles (clusters, bimodal, dispersed) ---------------------------------


@dataclass(frozen=True)
class ClusterSystem:
    """Particles in clusters; lengths in LR pixels, levels before gain."""

    particle_radius: float  # median radius of the primary particles
    radius_spread: float  # log-normal sigma of the radii
    cluster_median: float  # median particles per cluster beyond the first (log-normal)
    cluster_sigma: float  # log-normal sigma of that count (0: every cluster one particle)
    clusters_per_kpx: float  # clusters per 1000 LR px^2
    periphery: int  # a new particle attaches to the farthest of this many candidates
    branch_spread: float  # std of its direction from straight outwards, radians
    large_per_kpx: float  # isolated large particles per 1000 LR px^2 (bimodal)
    large_radius: float
    wiggle: float  # relative amplitude of outline harmonics
    host_level: float
    host_texture: float
    texture_scale: float
    particle_level: float
    level_spread: float  # std of particle levels, fraction of the particle contrast
    rim_gain: float
    rim_width: float
    halo: float  # host darkening next to particles, fraction of the particle contrast
    halo_width: float
    family: str = "clusters"  # or bimodal, dispersed: the draw that chose these values

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas:
        canvas = blank_canvas(self, rng, config)
        centres, radii = _cluster_particles(self, rng, config, canvas.margin)
        polygons = outlines(self, rng, centres, radii, vertices=16)  # radii of a few canvas px
        labels = fill_polygons(canvas.image.shape, canvas, polygons)
        contrast = self.particle_level - self.host_level
        levels = self.particle_level + rng.normal(0, self.level_spread * contrast, len(radii) + 1)
        return shaded_specimen(self, canvas, labels, levels, contrast, config)


def _grow(start, count, radii, rng: np.random.Generator, spec: ClusterSystem) -> np.ndarray:
    """(count, 2) centres of one cluster: each new particle touches one earlier particle,
    the farthest from the seed of ``spec.periphery`` random candidates, in a direction
    ``spec.branch_spread`` radians (std) from straight outwards (1 candidate and a wide
    spread: random aggregation, compact; more and narrower: branched strands)."""
    centres = np.empty((count, 2))
    centres[0] = start
    first_angle = rng.uniform(0, 2 * np.pi)
    turns = rng.normal(0, spec.branch_spread, count)
    reach = rng.uniform(0.75, 1.0, count)
    candidates = rng.random((count, spec.periphery))
    for k in range(1, count):
        picks = (candidates[k] * k).astype(int)
        away = centres[picks] - start  # (periphery, 2)
        pick = int(np.argmax(np.hypot(away[:, 0], away[:, 1])))
        anchor = picks[pick]
        outward = math.atan2(away[pick, 1], away[pick, 0]) if anchor else first_angle
        angle = outward + turns[k]
        step = (radii[anchor] + radii[k]) * reach[k]
        centres[k] = centres[anchor] + step * np.array([math.cos(angle), math.sin(angle)])
    return centres


def _cluster_particles(spec: ClusterSystem, rng: np.random.Generator, config, margin: float):
    """Centres (P, 2) and radii (P,) in LR px: grown clusters, then isolated large ones."""
    low, high, area = field_bounds(config, margin)
    seeds = rng.uniform(low, high, size=(rng.poisson(spec.clusters_per_kpx * area / 1000), 2))
    if spec.cluster_sigma > 0:
        extra = rng.lognormal(math.log(spec.cluster_median), spec.cluster_sigma, len(seeds))
    else:
        extra = np.zeros(len(seeds))
    counts = np.minimum(1 + np.round(extra).astype(int), _MAX_CLUSTER_PARTICLES)
    radii = spec.particle_radius * np.exp(rng.normal(0.0, spec.radius_spread, counts.sum()))
    parts, first = [], 0
    for start, count in zip(seeds, counts):
        parts.append(_grow(start, count, radii[first : first + count], rng, spec))
        first += count
    centres = np.vstack(parts) if parts else np.empty((0, 2))
    if spec.large_per_kpx > 0:
        n_large = rng.poisson(spec.large_per_kpx * area / 1000)
        large = spec.large_radius * np.exp(rng.normal(0.0, spec.radius_spread, n_large))
        centres = np.vstack([centres, rng.uniform(low, high, size=(n_large, 2))])
        radii = np.concatenate([radii, large])
    return centres, radii


def _cluster_common(rng: np.random.Generator) -> dict:
    """Host, levels and edge shading shared by the cluster families."""
    return {
        "wiggle": float(rng.uniform(0.08, 0.15)),
        "host_level": float(rng.uniform(0.25, 0.32)),
        "host_texture": float(rng.uniform(0.02, 0.035)),
        "texture_scale": float(rng.uniform(6, 14)),
        "particle_level": float(rng.uniform(0.58, 0.66)),
        "level_spread": float(rng.uniform(0.17, 0.23)),
        "rim_gain": float(rng.uniform(0.12, 0.18)),
        "rim_width": float(rng.uniform(0.4, 0.6)),
        "halo": float(rng.uniform(0.025, 0.035)),
        "halo_width": float(rng.uniform(2.5, 3.5)),
    }


def draw_clusters(rng: np.random.Generator) -> ClusterSystem:
    """Small particles (radius ~1 LR px) in rough clusters of heavy-tailed size."""
    return ClusterSystem(
        particle_radius=float(rng.uniform(0.9, 1.1)),
        radius_spread=float(rng.uniform(0.3, 0.4)),
        cluster_median=float(rng.uniform(8, 12)),
        cluster_sigma=float(rng.uniform(1.35, 1.55)),
        clusters_per_kpx=float(rng.uniform(1.15, 1.45)),
        periphery=4,
        branch_spread=0.8,
        large_per_kpx=0.0,
        large_radius=0.0,
        **_cluster_common(rng),
    )


def draw_bimodal(rng: np.random.Generator) -> ClusterSystem:
    """Two populations: clusters of small particles and isolated large particles."""
    return ClusterSystem(
        particle_radius=float(rng.uniform(1.0, 1.3)),
        radius_spread=float(rng.uniform(0.15, 0.25)),
        cluster_median=float(rng.uniform(6, 10)),
        cluster_sigma=float(rng.uniform(0.8, 1.0)),
        clusters_per_kpx=float(rng.uniform(0.6, 0.9)),
        periphery=2,
        branch_spread=1.5,
        large_per_kpx=float(rng.uniform(0.25, 0.4)),
        large_radius=float(rng.uniform(3.5, 5.0)),
        **_cluster_common(rng),
        family="bimodal",
    )


def draw_dispersed(rng: np.random.Generator) -> ClusterSystem:
    """Isolated particles of narrow size (monodisperse), few touching."""
    return ClusterSystem(
        particle_radius=float(rng.uniform(1.8, 2.4)),
        radius_spread=float(rng.uniform(0.05, 0.1)),
        cluster_median=1.0,
        cluster_sigma=0.0,
        clusters_per_kpx=float(rng.uniform(5, 7)),
        periphery=1,
        branch_spread=math.pi,
        large_per_kpx=0.0,
        large_radius=0.0,
        **_cluster_common(rng),
        family="dispersed",
    )


# --- grains --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrainSystem:
    """A polycrystal: Voronoi grains with grooved boundaries and small precipitates."""

    family: ClassVar[str] = "grains"

    grains_per_kpx: float  # grain seeds per 1000 LR px^2 (mean grain area 1000 / this)
    host_level: float  # mean grain level
    grain_spread: float  # std of grain levels (channelling contrast)
    host_texture: float
    texture_scale: float
    groove_depth: float  # darkening at a boundary
    groove_width: float  # LR px
    rim_gain: float  # brightening of the groove's shoulders
    rim_width: float
    precipitates_per_kpx: float
    precipitate_radius: float
    precipitate_level: float
    wiggle: float

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas:
        canvas = blank_canvas(self, rng, config)
        density = canvas.density
        shape = canvas.image.shape
        low, high, area = field_bounds(config, canvas.margin)
        n_grains = max(2, rng.poisson(self.grains_per_kpx * area / 1000))
        seeds = np.round(canvas.to_canvas(rng.uniform(low, high, size=(n_grains, 2))))
        seeds = np.clip(seeds, 0, [shape[1] - 1, shape[0] - 1]).astype(int)
        zeros = np.full(shape, 255, np.uint8)
        zeros[seeds[:, 1], seeds[:, 0]] = 0
        _, grains = cv2.distanceTransformWithLabels(
            zeros, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
        )  # (Hc, Wc) int32: Voronoi cell of the nearest seed
        offsets = rng.normal(0, self.grain_spread, grains.max() + 1).astype(np.float32)
        signal = canvas.image + offsets[grains]
        boundary = cv2.distanceTransform(label_edges(grains), cv2.DIST_L2, 3) / density  # LR px
        groove = cv2.exp(boundary * np.float32(-1 / self.groove_width))
        shoulder = cv2.exp(
            np.abs(boundary - 1.5 * self.groove_width) * np.float32(-1 / self.rim_width)
        )
        gain = self.rim_gain * config.edge_brightening
        signal += shoulder * np.float32(gain) - groove * np.float32(self.groove_depth)
        n_precipitates = rng.poisson(self.precipitates_per_kpx * area / 1000)
        centres = rng.uniform(low, high, size=(n_precipitates, 2))
        radii = self.precipitate_radius * np.exp(rng.normal(0, 0.3, n_precipitates))
        labels = fill_polygons(shape, canvas, outlines(self, rng, centres, radii))
        levels = np.full(n_precipitates + 1, self.precipitate_level)
        canvas = Canvas(signal, density, canvas.margin)
        signal = shade_objects(
            canvas, labels, levels, rim_gain=gain, rim_width=0.5, halo=0.0, halo_width=1.0
        )
        return Canvas(with_contrast(signal, self.host_level, config), density, canvas.margin)


def draw_grains(rng: np.random.Generator) -> GrainSystem:
    return GrainSystem(
        grains_per_kpx=float(rng.uniform(2.5, 6)),
        host_level=float(rng.uniform(0.3, 0.4)),
        grain_spread=float(rng.uniform(0.06, 0.1)),
        host_texture=float(rng.uniform(0.015, 0.025)),
        texture_scale=float(rng.uniform(6, 14)),
        groove_depth=float(rng.uniform(0.2, 0.3)),
        groove_width=float(rng.uniform(0.4, 0.7)),
        rim_gain=float(rng.uniform(0.04, 0.08)),
        rim_width=float(rng.uniform(0.4, 0.6)),
        precipitates_per_kpx=float(rng.uniform(1.2, 1.8)),
        precipitate_radius=float(rng.uniform(1.3, 1.7)),
        precipitate_level=float(rng.uniform(0.6, 0.7)),
        wiggle=0.08,
    )


# --- fibres --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FibreSystem:
    """Overlapping curved fibres on a host; later fibres lie on top."""

    family: ClassVar[str] = "fibres"

    fibres_per_kpx: float
    length: float  # median length, LR px (log-normal, sigma 0.5)
    radius: float  # median half-width, LR px (log-normal, sigma 0.25)
    bend: float  # std of the direction change per LR px of length, radians
    host_level: float
    host_texture: float
    texture_scale: float
    fibre_level: float
    level_spread: float  # fraction of the fibre contrast
    rim_gain: float
    rim_width: float
    halo: float  # fraction of the fibre contrast
    halo_width: float

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas:
        canvas = blank_canvas(self, rng, config)
        low, high, area = field_bounds(config, canvas.margin)
        n_fibres = rng.poisson(self.fibres_per_kpx * area / 1000)
        labels = np.zeros(canvas.image.shape, np.int32)
        for index in range(1, n_fibres + 1):
            path = _fibre_path(self, rng, low, high)  # (N, 2) specimen units
            width = self.radius * math.exp(rng.normal(0, 0.25)) * 2 * canvas.density
            points = np.round(canvas.to_canvas(path) * 8).astype(np.int32)
            cv2.polylines(labels, [points], False, index, max(1, round(width)), cv2.LINE_8, 3)
        contrast = self.fibre_level - self.host_level
        levels = self.fibre_level + rng.normal(0, self.level_spread * contrast, n_fibres + 1)
        return shaded_specimen(self, canvas, labels, levels, contrast, config)


def _fibre_path(spec: FibreSystem, rng: np.random.Generator, low, high) -> np.ndarray:
    """A smooth random curve: (steps + 1, 2) points one LR px apart."""
    steps = max(2, round(spec.length * math.exp(rng.normal(0, 0.5))))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, spec.bend, steps))
    moves = np.stack([np.cos(heading), np.sin(heading)], axis=1)  # (steps, 2)
    start = rng.uniform(low, high)
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def draw_fibres(rng: np.random.Generator) -> FibreSystem:
    return FibreSystem(
        fibres_per_kpx=float(rng.uniform(0.4, 0.7)),
        length=float(rng.uniform(30, 60)),
        radius=float(rng.uniform(0.8, 1.3)),
        bend=float(rng.uniform(0.03, 0.08)),
        host_level=float(rng.uniform(0.25, 0.32)),
        host_texture=float(rng.uniform(0.02, 0.035)),
        texture_scale=float(rng.uniform(6, 14)),
        fibre_level=float(rng.uniform(0.55, 0.65)),
        level_spread=float(rng.uniform(0.1, 0.2)),
        rim_gain=float(rng.uniform(0.12, 0.2)),
        rim_width=float(rng.uniform(0.3, 0.5)),
        halo=float(rng.uniform(0.03, 0.06)),
        halo_width=float(rng.uniform(1.5, 3.0)),
    )


# --- porous films --------------------------------------------------------------------------


@dataclass(frozen=True)
class PorousFilm:
    """A bright film (the host) with dark pores; pore edges on the film side brighten."""

    family: ClassVar[str] = "porous"

    pores_per_kpx: float
    pore_radius: float  # median, LR px
    pore_spread: float  # log-normal sigma of pore radii
    wiggle: float
    host_level: float  # the film
    host_texture: float
    texture_scale: float
    pore_level: float
    level_spread: float  # std of pore levels (depth)
    rim_gain: float  # film brightening at a pore edge
    rim_width: float

    def render(self, rng: np.random.Generator, config: SynthConfig) -> Canvas:
        canvas = blank_canvas(self, rng, config)
        low, high, area = field_bounds(config, canvas.margin)
        n_pores = rng.poisson(self.pores_per_kpx * area / 1000)
        centres = rng.uniform(low, high, size=(n_pores, 2))
        radii = self.pore_radius * np.exp(rng.normal(0, self.pore_spread, n_pores))
        labels = fill_polygons(canvas.image.shape, canvas, outlines(self, rng, centres, radii))
        levels = self.pore_level + rng.normal(0, self.level_spread, n_pores + 1)
        inside = labels > 0
        signal = canvas.image
        signal[inside] = levels.astype(np.float32)[labels[inside]]
        distance = cv2.distanceTransform(label_edges(labels), cv2.DIST_L2, 3)
        rim = cv2.exp(distance * np.float32(-1 / (self.rim_width * canvas.density)))
        gain = self.rim_gain * config.edge_brightening
        signal += np.where(inside, np.float32(0), rim * np.float32(gain))
        return Canvas(with_contrast(signal, self.host_level, config), canvas.density, canvas.margin)


def draw_porous(rng: np.random.Generator) -> PorousFilm:
    return PorousFilm(
        pores_per_kpx=float(rng.uniform(2, 3)),
        pore_radius=float(rng.uniform(2.0, 3.0)),
        pore_spread=float(rng.uniform(0.4, 0.55)),
        wiggle=float(rng.uniform(0.08, 0.15)),
        host_level=float(rng.uniform(0.45, 0.55)),
        host_texture=float(rng.uniform(0.02, 0.035)),
        texture_scale=float(rng.uniform(6, 14)),
        pore_level=float(rng.uniform(0.12, 0.18)),
        level_spread=float(rng.uniform(0.02, 0.04)),
        rim_gain=float(rng.uniform(0.15, 0.25)),
        rim_width=float(rng.uniform(0.4, 0.6)),
    )


# --- the families --------------------------------------------------------------------------

# name -> drawer of one run's material system (drawn once per run, rendered per pair)
FAMILIES: dict[str, Callable[[np.random.Generator], SpecimenModel]] = {
    "aggregates": draw_aggregates,
    "clusters": draw_clusters,
    "bimodal": draw_bimodal,
    "dispersed": draw_dispersed,
    "grains": draw_grains,
    "fibres": draw_fibres,
    "porous": draw_porous,
}
