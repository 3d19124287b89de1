"""Evaluation streams: every test tile, or every whole registered image, exactly once.

- :func:`test_tiles`: every test tile exactly once, in a fixed order, with its metadata;
- :func:`full_images`: every whole registered image once (evaluation, and training's
  validation through it, predict them whole).

Both read as the caller iterates (one image in memory at a time) from any source
(aeatrain/data/sources.py), in pair-name order. With ``world_size > 1`` item ``i`` goes
to rank ``i % world_size`` and only this rank's items are read: evaluation splits the
images over ranks, unlike the training stream, which never splits the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from aeatrain.data.format import DatasetError, Region, SampleMeta
from aeatrain.data.manifest import Shard, check_pairs
from aeatrain.data.sources import DataSource, decode_meta, decode_pair, resolve, scan


@dataclass
class TestTile:
    """One test tile of a registered pair; ``lr`` and ``hr`` are (H, W) uint8|uint16."""

    __test__ = False  # not a pytest test class

    pair: str
    tile_id: str  # "test0".."test2"
    index: int  # position in the fixed order of all (selected) tiles
    lr: np.ndarray
    hr: np.ndarray
    bit_depth: int
    region: Region  # in the registered image
    meta: dict  # the sample's json


@dataclass
class FullImage:
    """A whole registered pair; ``lr`` and ``hr`` are (H, W) uint8|uint16."""

    pair: str
    index: int
    lr: np.ndarray
    hr: np.ndarray
    bit_depth: int
    test_regions: dict[str, Region]  # "test0".."test2"
    train_region: Region
    meta: dict  # the sample's json

    def test_tile(self, tile_id: str) -> TestTile:
        """Test region ``tile_id`` cut out of the whole image: the pixels of the ``test``
        split's sample of that id (``meta`` stays the whole image's json)."""
        region = self.test_regions[tile_id]
        window = region.window
        index = self.index * len(self.test_regions) + sorted(self.test_regions).index(tile_id)
        return TestTile(
            self.pair, tile_id, index, self.lr[window], self.hr[window], self.bit_depth,
            region, self.meta,
        )  # fmt: skip


def _ordered_samples(
    shards: Sequence[Shard], wanted: set[str] | None, rank: int, world_size: int
) -> Iterator[tuple[int, str, str, SampleMeta, dict]]:
    """(index, url, key, meta, files) of this rank's samples, in stream order.

    Index i counts the selected samples; sample i belongs to rank ``i % world_size``, and
    only this rank's samples are read. Shards must list samples in (pair, region id)
    order, as DATA folders do.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    index, previous = 0, None
    for shard in shards:
        mine = []
        for sample in shard.index.samples:
            order = (sample.pair, sample.region_id)
            if previous is not None and order <= previous:
                raise DatasetError(f"{shard.url}: sample {sample.key} is out of pair-name order")
            previous = order
            if wanted is not None and sample.pair not in wanted:
                continue
            if index % world_size == rank:
                mine.append((index, sample))
            index += 1
        if not mine:
            continue
        with shard.open() as reader:
            for position, sample in mine:
                files = shard.read(reader, sample, ("lr.png", "hr.png", "json"))
                meta = decode_meta(shard.url, sample.key, files)
                yield position, shard.url, sample.key, meta, files


def _eval_stream(
    source: DataSource, split: str, pairs: Sequence[str] | None, cache_dir: str | None
) -> tuple[list[Shard], set[str] | None]:
    shards, manifest = resolve(source, split, cache_dir)
    if pairs is None:
        return shards, None
    if manifest is not None:
        known, where = manifest.pair_names, manifest.path
    else:
        known, where = sorted({r.pair for r in scan(shards)}), shards[0].url
    return shards, set(check_pairs(pairs, known, where))


def test_tiles(
    source: DataSource,
    *,
    pairs: Sequence[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | None = None,
) -> Iterator[TestTile]:
    """Every test tile exactly once, in pair-name order then test0..test2, read as the
    caller iterates (stop early and the rest is never read).

    With ``world_size > 1`` tile ``i`` (of the selected tiles) goes to rank
    ``i % world_size``; other ranks' tiles are not read.
    """
    shards, wanted = _eval_stream(source, "test", pairs, cache_dir)
    return _tiles(shards, wanted, rank, world_size)


test_tiles.__test__ = False  # a loader, not a pytest test


def _tiles(shards, wanted, rank, world_size) -> Iterator[TestTile]:
    for index, url, key, meta, files in _ordered_samples(shards, wanted, rank, world_size):
        lr, hr = decode_pair(url, key, files)
        depth = 8 if lr.dtype == np.uint8 else 16
        yield TestTile(meta.pair, meta.region_id, index, lr, hr, depth, meta.region, meta.as_dict())


def full_images(
    source: DataSource,
    *,
    pairs: Sequence[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | None = None,
) -> Iterator[FullImage]:
    """Every whole registered image once, in pair-name order, read as the caller iterates
    (one image in memory at a time); image i to rank i % world_size."""
    shards, wanted = _eval_stream(source, "full", pairs, cache_dir)
    return _full(shards, wanted, rank, world_size)


def _full(shards, wanted, rank, world_size) -> Iterator[FullImage]:
    for index, url, key, meta, files in _ordered_samples(shards, wanted, rank, world_size):
        lr, hr = decode_pair(url, key, files)
        if meta.test_regions is None or meta.train_region is None:
            raise DatasetError(f"{url}: sample {key} json lacks test_regions/train_region")
        depth = 8 if lr.dtype == np.uint8 else 16
        yield FullImage(
            meta.pair, index, lr, hr, depth, meta.test_regions, meta.train_region, meta.as_dict()
        )
