"""aeatrain/data/streams.py: the test tiles and whole images, each once, in order."""

import numpy as np
import pytest

from aeatrain.data.format import DatasetError
from aeatrain.data.streams import full_images, test_tiles
from tests.datasets import make_dataset, split_regions


def test_test_tiles_once_each_in_order_and_split_over_ranks(plain):
    tiles = list(test_tiles(plain))
    order = [(t.pair, t.tile_id) for t in tiles]
    assert order == [(f"pair{k:02d}", f"test{i}") for k in range(3) for i in range(3)]
    assert [t.index for t in tiles] == list(range(9))
    fulls = {f.pair: f for f in full_images(plain)}
    for tile in tiles:  # each tile is its region of the whole registered image
        box = tile.region
        assert tile.bit_depth == 8 and tile.meta["split"] == "test"
        np.testing.assert_array_equal(
            tile.lr, fulls[tile.pair].lr[box.y0 : box.y1, box.x0 : box.x1]
        )
        np.testing.assert_array_equal(
            tile.hr, fulls[tile.pair].hr[box.y0 : box.y1, box.x0 : box.x1]
        )
        assert tuple(box.window) == (slice(box.y0, box.y1), slice(box.x0, box.x1))
    ranks = [[t.index for t in test_tiles(plain, rank=r, world_size=2)] for r in (0, 1)]
    assert ranks == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    chosen = list(test_tiles(plain, pairs=["pair02", "pair00"]))
    assert [(t.pair, t.index) for t in chosen] == [("pair00", i) for i in range(3)] + [
        ("pair02", i) for i in range(3, 6)
    ]
    with pytest.raises(DatasetError, match="no pair named 'x'"):
        test_tiles(plain, pairs=["x"])


def test_full_images_carry_their_regions(plain):
    fulls = list(full_images(plain, rank=1, world_size=2))
    assert [(f.pair, f.index) for f in fulls] == [("pair01", 1)]
    full = fulls[0]
    assert full.lr.shape == full.hr.shape == (240, 320) and full.lr.dtype == np.uint8
    train, tests = split_regions(320, 240)
    assert full.train_region.as_dict() == train
    assert {name: region.as_dict() for name, region in full.test_regions.items()} == tests
    cut = full.test_tile("test1")  # what validation shows: the test sample's pixels
    stored = next(t for t in test_tiles(plain) if (t.pair, t.tile_id) == ("pair01", "test1"))
    assert (cut.pair, cut.tile_id, cut.index) == ("pair01", "test1", 4)
    assert cut.region.as_dict() == tests["test1"]
    assert cut.index == stored.index and cut.bit_depth == stored.bit_depth == 8
    np.testing.assert_array_equal(cut.lr, stored.lr)
    np.testing.assert_array_equal(cut.hr, stored.hr)


def test_16_bit_tiles_keep_their_depth(tmp_path):
    root = make_dataset(tmp_path / "D", pairs=1, width=160, height=120, bit_depth=16)
    tile = next(iter(test_tiles(root)))
    assert tile.bit_depth == 16 and tile.lr.dtype == np.uint16 and tile.hr.max() > 255


def test_synthetic_pairs_are_learnable(plain):
    """tests/datasets.py promises HR = f(LR) + detail: LR is a blurred, noisy HR."""
    full = next(iter(full_images(plain)))
    lr, hr = full.lr.astype(np.float64), full.hr.astype(np.float64)
    assert np.corrcoef(lr.ravel(), hr.ravel())[0, 1] > 0.8
    assert np.abs(lr - hr).mean() > 3  # but not the identity: something to learn
