"""The D4 group: the 8 symmetries of the square (4 rotations, each with or without a mirror).

One home for training's paired augmentation (aeatrain/data/loader.py applies the same op
to LR and HR) and prediction's self-ensemble (aeatrain/protocol/inference.py). An element is an op
in ``0..ORDER - 1``: mirror left-right when ``op >= 4``, then rotate by ``op % 4`` quarter
turns (numpy's ``rot90`` direction, counter-clockwise).
"""

from __future__ import annotations

import numpy as np

ORDER = 8  # elements of the group: op in range(ORDER)


def transform(image, op: int):
    """One of the 8 symmetries of the square on the last two axes (numpy, a view).

    ``op`` in 0..7: flip left-right when ``op >= 4``, then rotate by ``op % 4`` quarter
    turns (numpy's ``rot90`` direction). Apply the same ``op`` to LR and HR.
    """
    if not 0 <= op < ORDER:
        raise ValueError(f"D4 op must be in 0..7, got {op}")
    flipped = np.flip(image, axis=-1) if op >= 4 else image
    return np.rot90(flipped, k=op % 4, axes=(-2, -1))


def inverse(op: int) -> int:
    """The op undoing ``op``: reflections undo themselves, rotations turn back."""
    return op if op >= 4 else (4 - op) % 4


def shape_preserving(op: int) -> int:
    """Map an op to one that keeps a non-square crop's shape (an even number of turns).

    Maps 0..7 two-to-one onto {0, 2, 4, 6} (identity, 180 degrees, flip left-right, flip
    up-down), so a uniform draw stays uniform over those four.
    """
    return op - op % 2
