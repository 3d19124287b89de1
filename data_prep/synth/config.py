"""What is imaged and how: ``SynthConfig`` (the options of ``data_prep synth``) and its
presets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from aeatrain.errors import UserError


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
