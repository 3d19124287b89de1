"""Pictures for TensorBoard: LR | prediction | HR grids and reference heatmaps (paper Fig. 6).

Arrays are float32 (C, H, W) in [0, 1], what ``SummaryWriter.add_image(..., dataformats=
"CHW")`` expects. Only the main process makes them; nothing here is collective.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from aeatrain.files.images import to_float
from aeatrain.protocol.heatmaps import heatmap, reference_maps

GAP_PX = 4  # white bar between panels


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Concatenate (C, H, W) panels of equal height left to right with white gaps."""
    channels, height = panels[0].shape[:2]
    gap = np.ones((channels, height, GAP_PX), dtype=np.float32)
    pieces = []
    for panel in panels:
        pieces += [panel.astype(np.float32), gap]
    return np.concatenate(pieces[:-1], axis=2)  # (C, H, sum W + gaps)


def comparison_grid(tile, prediction: np.ndarray) -> np.ndarray:
    """(1, H, 3W + 2 gaps): the LR input, the prediction (clipped to [0, 1]), the HR truth.

    ``prediction`` is the model's float (H, W) output for the tile (validation cuts it from
    the whole-image prediction it scored)."""
    lr = to_float(tile.lr, tile.bit_depth)
    hr = to_float(tile.hr, tile.bit_depth)
    return side_by_side([lr[None], np.clip(prediction, 0.0, 1.0)[None], hr[None]])


def chosen_references(num_refs: int, count: int) -> list[int]:
    """``count`` reference indices spread evenly over ``0..num_refs-1`` (all if fewer)."""
    if num_refs <= count:
        return list(range(num_refs))
    return sorted(set(np.rint(np.linspace(0, num_refs - 1, count)).astype(int).tolist()))


def colorize(relevance: np.ndarray) -> np.ndarray:
    """(H, W) relevance -> (3, H, W) RGB in [0, 1]: ``aeatrain.protocol.heatmaps.heatmap``'s picture."""
    rgb = heatmap(relevance)[..., ::-1]  # (H, W, 3) uint8, BGR -> RGB
    return to_float(rgb.transpose(2, 0, 1), 8)  # (3, H, W)


def reference_heatmaps(model: nn.Module, tile, refs: list[int]) -> np.ndarray:
    """(3, H, W') row: the LR tile, then the relevance map of each chosen reference.

    The maps are ``aeatrain.protocol.heatmaps``'s (the tile reflect-padded like a prediction and
    cropped back, eval mode, the mode restored after), drawn by its :func:`heatmap`, each
    scaled to its own range: the pictures ``python -m aeatrain.refmaps`` writes.
    """
    lr = to_float(tile.lr, tile.bit_depth)  # (H, W)
    maps = reference_maps(model, lr, refs)  # (len(refs), H, W)
    grey = np.repeat(lr[None], 3, axis=0)  # (3, H, W)
    return side_by_side([grey] + [colorize(m) for m in maps])
