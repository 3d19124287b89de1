"""The paper's split of a registered pair (protocol ``paper-split-v1``, docs/formats.md).

The one home of the split's rules: data_prep build cuts datasets with :func:`paper_split`,
export finds a package's test input with it; evaluation and training read the regions it
recorded in each sample. The manifest's reader checks the name it records
(``aeatrain.data.format.PROTOCOL_NAME``, imported here).

The published code trains on random crops from columns ``[0, 960)`` of each 1280 x 944
registered pair and tests on three tiles of the remaining columns. Generalised to any
size ``W x H``: the training width is the largest multiple of 16 not above ``0.75 W``
(the U-Net downsamples twice, and full-width training crops should stay divisible),
the test tiles are ``floor(H / 3)`` rows high.
"""

from __future__ import annotations

from dataclasses import dataclass

from aeatrain.data.format import PROTOCOL_NAME, Region

TRAIN_FRACTION = 0.75
TEST_TILES = 3
PROTOCOL = {"name": PROTOCOL_NAME, "train_fraction": TRAIN_FRACTION, "test_tiles": TEST_TILES}


@dataclass(frozen=True)
class PairSplit:
    """Where each region of a registered ``width x height`` pair lies (regions are
    :class:`aeatrain.data.format.Region`, the format module's own)."""

    width: int
    height: int
    train: Region
    tests: dict[str, Region]  # "test0".."test2"

    @property
    def full(self) -> Region:
        return Region(x0=0, y0=0, x1=self.width, y1=self.height)


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
        f"test{k}": Region(x0=train_width, y0=k * tile_height, x1=width, y1=(k + 1) * tile_height)
        for k in range(TEST_TILES)
    }
    return PairSplit(width, height, Region(x0=0, y0=0, x1=train_width, y1=height), tests)
