"""The paper's split of a registered pair (protocol ``paper-split-v1``, docs/formats.md).

The published code trains on random crops from columns ``[0, 960)`` of each 1280 x 944
registered pair and tests on three tiles of the remaining columns. Generalised to any
size ``W x H``: the training width is the largest multiple of 16 not above ``0.75 W``
(the U-Net downsamples twice, and full-width training crops should stay divisible),
the test tiles are ``floor(H / 3)`` rows high.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_NAME = "paper-split-v1"
TRAIN_FRACTION = 0.75
TEST_TILES = 3
PROTOCOL = {"name": PROTOCOL_NAME, "train_fraction": TRAIN_FRACTION, "test_tiles": TEST_TILES}


@dataclass(frozen=True)
class Region:
    """Columns ``[x0, x1)`` x rows ``[y0, y1)`` in registered (HR-frame) pixels."""

    x0: int
    y0: int
    x1: int
    y1: int

    def as_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class PairSplit:
    """Where each region of a registered ``width x height`` pair lies."""

    width: int
    height: int
    train: Region
    tests: dict[str, Region]  # "test0".."test2"

    @property
    def full(self) -> Region:
        return Region(0, 0, self.width, self.height)


def paper_split(width: int, height: int) -> PairSplit:
    """The ``paper-split-v1`` regions of a ``width x height`` pair.

    For 1280 x 944: train columns [0, 960); tests columns [960, 1280) x rows [0, 314),
    [314, 628), [628, 942).
    """
    train_width = 16 * int(TRAIN_FRACTION * width // 16)
    tile_height = height // TEST_TILES
    if train_width < 16 or train_width >= width or tile_height < 1:
        raise ValueError(f"a {width}x{height} pair is too small for {PROTOCOL_NAME}")
    tests = {
        f"test{k}": Region(train_width, k * tile_height, width, (k + 1) * tile_height)
        for k in range(TEST_TILES)
    }
    return PairSplit(width, height, Region(0, 0, train_width, height), tests)
