"""Heatmaps of an AEANet's shared references (paper Fig. 6): for each chosen reference,
the relevance of every pixel to it, and the one renderer of such maps. ``python -m
aeatrain.refmaps`` writes them as figures; training's TensorBoard pictures
(aeatrain/training/images.py) draw them with the same functions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from aeatrain.errors import UserError
from aeatrain.files.images import from_float
from aeatrain.models import shared_references
from aeatrain.protocol.inference import (
    autocast_to_weights,
    eval_mode,
    pad_to_multiple,
    padding_multiple,
)

PANEL_WIDTH = 512  # montage panels are scaled to this width at most
REF_CHUNK = 16  # references per forward pass when ranking all of them


def num_refs(model: nn.Module, run_path: Path) -> int:
    """The model's number of shared references; UserError for models without any."""
    count = shared_references(model)
    if not count or not hasattr(model, "reference_maps"):
        raise UserError(
            f"{run_path}: this model has no shared references; reference maps need an "
            f"aeanet run with num_refs > 0"
        )
    return int(count)


def reference_maps(model: nn.Module, image: np.ndarray, refs: list[int]) -> np.ndarray:
    """Maps of ``refs`` for a float (H, W) image: float32 (len(refs), H, W).

    The image is reflect-padded to a multiple of 16 like a prediction and the maps are
    cropped back, so borders see the context whole-image prediction gives them. Runs in
    eval mode without gradients and restores the model's mode (training's pictures call
    it); 16-bit weights (DeepSpeed's) run under ``autocast_to_weights``, as scoring does.
    """
    h, w = image.shape
    parameter = next(model.parameters())
    padded = pad_to_multiple(image, padding_multiple(model))  # (Hp, Wp)
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    x = x[None, None].to(parameter.device)  # (1, 1, Hp, Wp)
    with eval_mode(model), autocast_to_weights(model):
        maps = model.reference_maps(x, refs)  # (1, len(refs), Hp, Wp)
    return maps[0, :, :h, :w].float().cpu().numpy()


def most_varying_refs(model: nn.Module, image: np.ndarray, count: int, top: int) -> list[int]:
    """The ``top`` references with the largest spatial standard deviation of relevance.

    Maps are computed ``REF_CHUNK`` references at a time, so memory stays at 16 maps.
    """
    spread = []
    for start in range(0, count, REF_CHUNK):
        chunk = list(range(start, min(count, start + REF_CHUNK)))
        maps = reference_maps(model, image, chunk)  # (len(chunk), H, W)
        spread.extend(maps.reshape(len(chunk), -1).std(axis=1).tolist())
    order = np.argsort(spread)[::-1][:top]
    return sorted(int(i) for i in order)


def heatmap(values: np.ndarray) -> np.ndarray:
    """Float (H, W) -> BGR uint8 colour map (OpenCV's TURBO), min-max scaled: the
    minimum is TURBO's dark blue, the maximum its dark red; a constant map is all
    minimum. The one heatmap renderer (training's TensorBoard pictures use it too)."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return cv2.applyColorMap(from_float(scaled, 8), cv2.COLORMAP_TURBO)


def overlay(grey: np.ndarray, values: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The heatmap of ``values`` blended over an 8-bit grey image; BGR uint8."""
    background = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(heatmap(values), alpha, background, 1.0 - alpha, 0.0)


def _panel(image: np.ndarray, label: str) -> np.ndarray:
    """Scale a BGR panel to at most PANEL_WIDTH wide and write its label in the corner."""
    h, w = image.shape[:2]
    if w > PANEL_WIDTH:
        size = (PANEL_WIDTH, max(1, round(h * PANEL_WIDTH / w)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    image = image.copy()
    cv2.putText(image, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    return image


def montage(grey: np.ndarray, maps: np.ndarray, refs: list[int]) -> np.ndarray:
    """Input and each map side by side (BGR uint8), 4 px white gaps."""
    panels = [_panel(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), "input")]
    panels += [_panel(heatmap(m), f"ref {k}") for k, m in zip(refs, maps)]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)
