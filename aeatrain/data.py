"""The one place that reads dataset shards (docs/formats.md §2), for training and evaluation.

Three streams, one reader:

- :func:`train_loader`: an endless stream of batches of paired random crops (LR and HR cut
  at the same place, optionally the same D4 flip/rotation on both) from the training
  regions, for step-based DDP training;
- :func:`test_tiles`: every test tile exactly once, in a fixed order, with its metadata;
- :func:`full_images`: every whole registered image once (evaluation, and training's
  validation through it, predict them whole).

A source is a DATA folder (or its ``manifest.json``), a DATA root URL
(``https://host/DATA``), a :class:`DatasetManifest` already loaded, or explicit shard URLs
(a list, or a webdataset brace pattern such as ``"pipe:curl -s https://host/train-{000000..
000003}.tar"``) for reading from elsewhere without a manifest.

How the streams read, and why:

- A reader opens ``manifest.json`` and the build-time index of each shard of the split
  it reads (aeatrain/dataformat.py), nothing else, before the first batch: no tar header
  is scanned and no shard hashed at start-up, so start-up costs the same for 22 pairs as
  for 10,000. Each member is checked against its index's sha256 when it is read, which
  covers exactly the bytes used; ``python -m data_prep verify DATA`` (or ``train.py
  --check`` with ``data.verify``) checks whole datasets once.
- The bytes come through aeatrain/shardio.py: local files at the index's offsets,
  ``http(s)://`` shards by range requests (only the members a rank decodes), or copies
  staged once per node into ``cache_dir``; ``pipe:`` shards are staged.
- Decoding PNGs is the cost (~12 ms per 960x944 region image on one core), cropping is
  cheap. So regions are decoded into a *pool* and each pool serves ``crops_per_region``
  crops per region before it is replaced. The schedule is fixed in steps: pool epoch
  ``e`` covers steps ``[e * P, (e + 1) * P)`` with ``P = ceil(pool_size *
  crops_per_region / batch_size)``. Decoded regions also stay in a cache (``cache_mib``)
  across pools, so a dataset of the paper's size is decoded once, as the published code
  holds every image in memory.
- Everything random is drawn from ``numpy.random.default_rng([seed, rank, stream, n])``
  with ``n`` the pool epoch (which regions) or the step (which crops, which D4 op). So the
  batch at step ``s`` on rank ``r`` is a pure function of (dataset, seed, s, r, settings):
  a run resumed at ``start_step`` sees exactly the batches an uninterrupted run would, and
  the number of worker threads or where the bytes come from changes nothing.
- Node splitting: NONE, on purpose. Every rank draws regions, with replacement, from every
  region of every shard, with its own RNG stream (seeded by its rank). Ranks therefore see
  different crops, never run dry and never wait for each other, even with fewer shards than
  ranks (the paper's 22 pairs fit in ONE train shard). This is webdataset's "resampled
  shards" done per region instead of per shard, so a pool mixes pairs from every shard.
- ``num_workers`` threads split the work by pool epoch: worker ``w`` of ``W`` makes
  every batch of epochs ``e0 + w, e0 + w + W, ...``, handed back in epoch order, so the
  trainer's thread only takes finished batches (why threads and not DataLoader
  processes: :func:`_threaded_batches`).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import statistics
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm
from webdataset.shardlists import expand_urls

from aeatrain import shardio
from aeatrain.dataformat import (
    MANIFEST_NAME,
    DatasetError,
    IndexedSample,
    Manifest,
    SampleMeta,
    ShardEntry,
    ShardIndex,
    index_name,
    index_tar,
    manifest_from_json,
    parse_json,
    sha256_bytes,
    verify_shards,
)
from aeatrain.imageio import to_float

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 8
MAX_CROPS_PER_REGION = 16
DEFAULT_CACHE_MIB = 512  # decoded regions kept per loader: the paper's 22 pairs need ~40
_INDEX_READERS = 8  # index files of a remote root fetched at once

# Separate RNG streams so the region choice and the crop choice never share draws.
_POOL_STREAM = 0
_CROP_STREAM = 1


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """One shard as this process reads it: where, its index, and the cache folder used."""

    url: str
    index: ShardIndex
    cache_dir: str | None = None

    def open(self) -> shardio.ShardReader:
        return shardio.open_shard(
            self.url,
            shard_bytes=self.index.shard_bytes,
            sha256=self.index.shard_sha256,
            cache_dir=self.cache_dir,
        )

    def read(self, reader: shardio.ShardReader, sample: IndexedSample, exts) -> dict[str, bytes]:
        """The members ``exts`` of ``sample``, in one read (they lie together in the tar),
        each checked against the sha256 in the index."""
        missing = [ext for ext in exts if ext not in sample.members]
        if missing:
            raise DatasetError(f"{self.url}: sample {sample.key} has no {', '.join(missing)}")
        members = {ext: sample.members[ext] for ext in exts}
        start = min(m.offset for m in members.values())
        end = max(m.offset + m.size for m in members.values())
        block = reader.read(start, end - start)
        files = {}
        for ext, member in members.items():
            data = block[member.offset - start : member.offset - start + member.size]
            if sha256_bytes(data) != member.sha256:
                raise DatasetError(
                    f"{self.url}: sample {sample.key}: {ext} differs from the shard's index "
                    f"(corrupt shard or stale index; run python -m data_prep verify)"
                )
            files[ext] = data
        return files


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class DatasetManifest:
    """A checked ``manifest.json``: where the shards are and what they hold."""

    root: str  # the DATA folder or URL
    path: str  # its manifest.json
    sha256: str  # of manifest.json itself: runs record which dataset they trained on
    raw: dict = field(repr=False)  # the whole manifest as read
    model: Manifest = field(repr=False)  # the same, typed
    _shards: dict = field(default_factory=dict, repr=False, compare=False)  # split -> [Shard]

    @property
    def scale(self) -> float:
        return self.model.scale

    @property
    def bit_depths(self) -> list[int]:
        return list(self.model.bit_depths)

    @property
    def pairs(self) -> dict[str, dict]:
        """Pair name -> ``{"width", "height", "bit_depth", "train_region"}`` (and any
        further keys the writer added)."""
        return self.raw["pairs"]

    @property
    def pair_names(self) -> list[str]:
        return sorted(self.model.pairs)

    def shard_urls(self, split: str) -> list[str]:
        """Paths (or URLs) of the split's shards, in manifest order (pair-name order)."""
        return [shardio.join(self.root, s.file) for s in self.entries(split)]

    def samples(self, split: str) -> int:
        return self._split(split).samples

    def entries(self, split: str) -> list[ShardEntry]:
        return self._split(split).shards

    def shards(self, split: str, cache_dir: str | None = None) -> list[Shard]:
        """The split's shards with their indexes (read once per split and cache folder)."""
        key = (split, cache_dir)
        if key not in self._shards:
            entries = self.entries(split)
            if shardio.local_path(self.root) is not None:
                indexes = [self._read_index(entry) for entry in entries]
            else:  # one request each: several at once
                with ThreadPoolExecutor(max_workers=_INDEX_READERS) as pool:
                    indexes = list(pool.map(self._read_index, entries))
            held = {sample.pair for index in indexes for sample in index.samples}
            missing = sorted(set(self.model.pairs) - held)
            if missing:
                raise DatasetError(
                    f"{self.path}: the {split} split's indexes hold no sample of pair "
                    f"{missing[0]!r} (an index that leaves samples out; run python -m "
                    "data_prep verify)"
                )
            urls = self.shard_urls(split)
            self._shards[key] = [Shard(u, i, cache_dir) for u, i in zip(urls, indexes)]
        return self._shards[key]

    def _read_index(self, entry: ShardEntry) -> ShardIndex:
        shard, where = shardio.join(self.root, entry.file), shardio.join(self.root, entry.index)
        try:
            data = shardio.read_file(where)
        except DatasetError as err:
            raise DatasetError(f"{shard}: its index cannot be read ({err})") from None
        if sha256_bytes(data) != entry.index_sha256:
            raise DatasetError(f"{where}: sha256 differs from {self.path} (changed or corrupt)")
        try:
            index = parse_json(data, ShardIndex)
        except ValueError as err:
            raise DatasetError(f"{where}: not a shard index ({err})") from None
        if index.shard_sha256 != entry.sha256 or len(index.samples) != entry.samples:
            raise DatasetError(f"{where}: does not index {shard} (the manifest's shard)")
        return index

    def _split(self, split: str):
        splits = self.model.splits
        if split not in splits:
            raise DatasetError(f"{self.path}: has no {split!r} split (has {sorted(splits)})")
        return splits[split]


def load_manifest(
    source: str | os.PathLike | DatasetManifest,
    *,
    verify_checksums: bool = False,
    workers: int = 4,
) -> DatasetManifest:
    """Read and check a DATA folder's (or DATA URL's) manifest, or the manifest path itself.

    Checks format, format_version, protocol and the manifest's fields; for a local folder
    that every listed shard and index exists. Reads nothing else: shards are hashed only
    when ``verify_checksums`` is True (every shard, its index and every member, on
    ``workers`` threads; local folders only). Any failure raises :class:`DatasetError`
    with one line naming the file.
    """
    if isinstance(source, DatasetManifest):
        manifest = source
    else:
        manifest = _read_manifest(os.fspath(source))
    local = shardio.local_path(manifest.root)
    if local is not None:
        _check_files(manifest, local)
    if verify_checksums:
        verify_dataset(manifest, workers=workers)
    return manifest


def dataset_identity(manifest: DatasetManifest) -> str:
    """sha256 of what a dataset holds: its pairs and every shard's checksum and size.

    Unlike ``manifest.sha256`` it ignores where the folder lies, when, by which command and
    in which manifest version it was written: the same data copied elsewhere has the same
    identity, a folder rebuilt from other pairs (or other pixels) another. Resuming a run
    compares identities (aeatrain/train.py).
    """
    content = {
        "scale": manifest.scale,
        "pairs": {
            name: [info.width, info.height, info.bit_depth, info.train_region.as_dict()]
            for name, info in sorted(manifest.model.pairs.items())
        },
        "splits": {
            split: [[shard.sha256, shard.samples] for shard in manifest.entries(split)]
            for split in sorted(manifest.model.splits)
        },
    }
    return sha256_bytes(json.dumps(content, sort_keys=True).encode())


def _read_manifest(text: str) -> DatasetManifest:
    if "://" in text:
        path = text if text.endswith(".json") else shardio.join(text, MANIFEST_NAME)
    else:
        local = Path(text)
        path = str(local / MANIFEST_NAME if local.is_dir() else local)
        if not Path(path).is_file():
            raise DatasetError(
                f"{path}: no such manifest (expected a DATA folder from data_prep build)"
            )
    data = shardio.read_file(path)
    model = manifest_from_json(data, path)
    root = path.rpartition("/")[0] if "://" in path else str(Path(path).parent)
    return DatasetManifest(root, path, sha256_bytes(data), model.as_dict(), model)


def _check_files(manifest: DatasetManifest, root: Path) -> None:
    """Every listed shard and index exists (a stat each; nothing is read)."""
    folder = str(root)
    for split, entry in manifest.model.splits.items():
        for shard in entry.shards:
            for name, what in ((shard.file, "shard"), (shard.index, "index of a shard")):
                path = os.path.join(folder, name)
                if not os.path.isfile(path):
                    raise DatasetError(
                        f"{path}: {split} {what} listed in {manifest.path} is missing"
                    )


def verify_dataset(manifest: DatasetManifest, *, workers: int = 4) -> None:
    """Hash every shard, index and member of a local DATA folder against the manifest, on
    ``workers`` threads with a progress bar; the first problem raises :class:`DatasetError`."""
    root = shardio.local_path(manifest.root)
    if root is None:
        raise DatasetError(f"{manifest.root}: only a local DATA folder can be verified")
    entries = [s for split in manifest.model.splits.values() for s in split.shards]
    with tqdm(total=len(entries), desc="verify", unit="shard") as bar:
        problems = verify_shards(root, entries, workers=workers, progress=bar.update)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DatasetError(problems[0] + more)


# ----------------------------------------------------------------------------- sources

DataSource = str | os.PathLike | Sequence[str] | DatasetManifest


def _resolve(
    source: DataSource, split: str, cache_dir: str | None = None
) -> tuple[list[Shard], DatasetManifest | None]:
    """The shards of ``split`` with their indexes, and the manifest (None for shard URLs)."""
    if isinstance(source, DatasetManifest):
        return source.shards(split, cache_dir), source
    urls = _shard_urls(source)
    if urls is not None:
        return [_unlisted_shard(url, cache_dir) for url in urls], None
    manifest = load_manifest(source)
    return manifest.shards(split, cache_dir), manifest


def _shard_urls(source: str | os.PathLike | Sequence[str]) -> list[str] | None:
    """The shard URLs a source names, or None when it names a DATA folder or URL."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise DatasetError("no shard URLs given (empty list)")
        return [os.fspath(url) for url in source]
    text = os.fspath(source)
    if text.startswith("pipe:") or "{" in text or "::" in text or text.endswith(".tar"):
        return expand_urls(text)  # webdataset's own rules: braces, "::" lists
    return None


def _unlisted_shard(url: str, cache_dir: str | None) -> Shard:
    """A shard given by URL, not through a manifest: its index file beside it, else (local
    and ``pipe:`` shards) an index made by reading it once."""
    path = shardio.local_path(url)
    if path is not None and not path.is_file():
        raise DatasetError(f"{path}: no such shard")
    beside = index_name(url) if url.endswith(".tar") and not shardio.is_stream(url) else None
    if beside is not None and (shardio.is_http(url) or Path(shardio.local_path(beside)).is_file()):
        try:
            return Shard(url, parse_json(shardio.read_file(beside), ShardIndex), cache_dir)
        except ValueError as err:
            raise DatasetError(f"{beside}: not a shard index ({err})") from None
        except DatasetError as err:
            raise DatasetError(f"{url}: its index cannot be read ({err})") from None
    if path is None and not shardio.is_stream(url):
        raise DatasetError(f"{url}: no index beside it; give a DATA root or a pipe: URL")
    staged = path if path is not None else shardio.stage(url, cache_dir, None)
    try:
        return Shard(url, index_tar(staged), cache_dir)
    except (ValueError, tarfile.TarError, OSError) as err:
        raise DatasetError(f"{url}: not a dataset shard ({err})") from None


# ----------------------------------------------------------------------------- reading


def _decode_png(url: str, key: str, files: dict, ext: str) -> np.ndarray:
    if ext not in files:
        raise DatasetError(f"{url}: sample {key} has no {ext}")
    image = cv2.imdecode(np.frombuffer(files[ext], np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"{url}: sample {key}: {ext} is not an 8/16-bit greyscale PNG")
    return image


def _decode_pair(url: str, key: str, files: dict) -> tuple[np.ndarray, np.ndarray]:
    """(lr, hr), (H, W) uint8|uint16 each, checked to match."""
    lr = _decode_png(url, key, files, "lr.png")
    hr = _decode_png(url, key, files, "hr.png")
    if lr.shape != hr.shape or lr.dtype != hr.dtype:
        raise DatasetError(
            f"{url}: sample {key}: lr {lr.shape} {lr.dtype} and hr {hr.shape} {hr.dtype} differ"
        )
    return lr, hr


def _decode_meta(url: str, key: str, files: dict) -> dict:
    try:
        return parse_json(files["json"], SampleMeta).as_dict()
    except (KeyError, ValueError) as err:
        raise DatasetError(f"{url}: sample {key} has no valid json ({err})") from None


@dataclass(frozen=True, slots=True)
class _Region:
    """One sample of a shard, as its index describes it (nothing read or decoded)."""

    shard: Shard
    sample: IndexedSample
    pair: str
    width: int
    height: int

    @property
    def url(self) -> str:
        return self.shard.url

    @property
    def key(self) -> str:
        return self.sample.key


def _scan(shards: Sequence[Shard]) -> list[_Region]:
    """Every sample of ``shards`` in stream order, from their indexes."""
    regions = []
    for shard in shards:
        for sample in shard.index.samples:
            box = sample.region
            regions.append(_Region(shard, sample, sample.pair, box.x1 - box.x0, box.y1 - box.y0))
    return regions


def _check_pairs(wanted: Sequence[str] | None, known: Sequence[str], where: str) -> list[str]:
    """The pairs to use; names not in the data raise :class:`DatasetError` naming them."""
    if wanted is None:
        return sorted(known)
    if isinstance(wanted, str):
        wanted = [wanted]
    missing = sorted(set(wanted) - set(known))
    if missing:
        raise DatasetError(f"{where}: no pair named {', '.join(map(repr, missing))}")
    return sorted(set(wanted))


def pair_names(source: DataSource) -> list[str]:
    """Names of the registered pairs of a dataset (or of the given train shards), sorted."""
    if isinstance(source, DatasetManifest) or _shard_urls(source) is None:
        return load_manifest(source).pair_names
    shards, _ = _resolve(source, "train")
    return sorted({region.pair for region in _scan(shards)})


# ----------------------------------------------------------------------------- D4


def d4_transform(image, op: int):
    """One of the 8 symmetries of the square on the last two axes (numpy, a view).

    ``op`` in 0..7: flip left-right when ``op >= 4``, then rotate by ``op % 4`` quarter
    turns (numpy's ``rot90`` direction). Apply the same ``op`` to LR and HR.
    """
    if not 0 <= op < 8:
        raise ValueError(f"D4 op must be in 0..7, got {op}")
    flipped = np.flip(image, axis=-1) if op >= 4 else image
    return np.rot90(flipped, k=op % 4, axes=(-2, -1))


def d4_inverse(op: int) -> int:
    """The op undoing ``op``: reflections undo themselves, rotations turn back."""
    return op if op >= 4 else (4 - op) % 4


def shape_preserving_op(op: int) -> int:
    """Map an op to one that keeps a non-square crop's shape (an even number of turns).

    Maps 0..7 two-to-one onto {0, 2, 4, 6} (identity, 180 degrees, flip left-right, flip
    up-down), so a uniform draw stays uniform over those four.
    """
    return op - op % 2


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class _TrainSettings:
    """Everything the batch at a step depends on, besides the dataset and the step."""

    seed: int
    rank: int
    batch_size: int
    crop_hw: tuple[int, int]
    augment: bool
    pool_size: int
    crops_per_region: int
    pin_memory: bool = False  # where the batch lives (page-locked host memory), not its values

    @property
    def steps_per_pool(self) -> int:
        return max(1, math.ceil(self.pool_size * self.crops_per_region / self.batch_size))


def _pool_plan(
    settings: _TrainSettings, n_regions: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pure: (region index per pool slot (pool_size,), slot per crop of the epoch (P * B,)).

    Regions are drawn with replacement from all regions (no node splitting, see the module
    docstring); every slot serves ``crops_per_region`` crops, in a shuffled order.
    """
    rng = np.random.default_rng([settings.seed, settings.rank, _POOL_STREAM, epoch])
    regions = rng.integers(0, n_regions, size=settings.pool_size)
    crops = settings.steps_per_pool * settings.batch_size
    slots = rng.permutation(np.arange(crops) % settings.pool_size)
    return regions, slots


def _crop_draws(settings: _TrainSettings, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure: (fractional offsets (B, 2) in [0, 1) as (y, x), D4 op (B,)) for one step."""
    rng = np.random.default_rng([settings.seed, settings.rank, _CROP_STREAM, step])
    fractions = rng.random((settings.batch_size, 2))
    ops = rng.integers(0, 8, size=settings.batch_size)  # drawn even without augment
    return fractions, ops


def crop_origin(region_hw: tuple[int, int], crop_hw: tuple[int, int], fraction) -> tuple[int, int]:
    """Top-left (y0, x0) of a crop inside a region, from fractions in [0, 1): uniform."""
    y0 = int(fraction[0] * (region_hw[0] - crop_hw[0] + 1))
    x0 = int(fraction[1] * (region_hw[1] - crop_hw[1] + 1))
    return y0, x0


def _decode_regions(regions: Sequence[_Region], wanted: Sequence[int]) -> dict[int, tuple]:
    """Decode regions: index -> (lr, hr) (H, W) uint8|uint16; each shard opened once and
    only the wanted samples' images read."""
    by_url: dict[str, list[int]] = {}
    for index in wanted:
        by_url.setdefault(regions[index].url, []).append(index)
    decoded = {}
    for indices in by_url.values():
        shard = regions[indices[0]].shard
        with shard.open() as reader:
            for index in indices:
                region = regions[index]
                files = shard.read(reader, region.sample, ("lr.png", "hr.png"))
                decoded[index] = _decode_pair(shard.url, region.key, files)
                if decoded[index][0].shape != (region.height, region.width):
                    raise DatasetError(
                        f"{shard.url}: sample {region.key} is {decoded[index][0].shape[::-1]} "
                        f"pixels, its index says {region.width}x{region.height}"
                    )
    return decoded


class _RegionCache:
    """Decoded regions kept across pools, least recently used out first, up to a byte budget.

    A pool redraws regions every few steps; a small dataset (the paper's 22 pairs are
    ~40 MB decoded at 8 bit) then stays decoded, as the published code keeps every image
    in memory, while a large one costs at most ``capacity_bytes``. Only speed depends on
    the cache, never which pixels a step gets. Shared by the worker threads: two may
    decode the same missing region at once (wasted work, same result), never corrupt it.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.entries: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def fetch(self, regions: Sequence[_Region], chosen: Sequence[int]) -> dict[int, tuple]:
        """Index -> (lr, hr) for every chosen region, decoding only the missing ones."""
        wanted = sorted({int(i) for i in chosen})
        with self.lock:
            pool = {i: self.entries[i] for i in wanted if i in self.entries}
            for index in pool:
                self.entries.move_to_end(index)
        fresh = _decode_regions(regions, [i for i in wanted if i not in pool])  # no lock held
        with self.lock:
            for index, pair in fresh.items():
                self._put(index, pair)
        return {**pool, **fresh}

    def _put(self, index: int, pair: tuple[np.ndarray, np.ndarray]) -> None:
        if index in self.entries:
            return
        self.entries[index] = pair
        self.bytes += sum(image.nbytes for image in pair)
        while self.bytes > self.capacity_bytes and self.entries:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= sum(image.nbytes for image in evicted)


@dataclass(frozen=True)
class _Pool:
    """The decoded regions of one pool epoch and which slot serves which crop."""

    epoch: int
    chosen: np.ndarray  # (pool_size,) region index per slot
    slots: np.ndarray  # (steps_per_pool * batch_size,) slot per crop
    images: dict[int, tuple[np.ndarray, np.ndarray]]  # region index -> (lr, hr)


def _batch_tensors(shape: tuple[int, ...], pinned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's LR and HR float32 tensors, to be filled through ``.numpy()``.

    Pinned ones come from torch's caching host allocator, which holds each block until
    the asynchronous copy to the GPU that reads it has finished; a numpy array wrapped
    by ``torch.from_numpy`` would not be tracked so.
    """
    if pinned:
        return tuple(torch.empty(shape, dtype=torch.float32, pin_memory=True) for _ in "lh")
    return tuple(torch.from_numpy(np.empty(shape, np.float32)) for _ in "lh")


def _make_batch(pool: _Pool, regions: list[_Region], settings: _TrainSettings, step: int) -> dict:
    """The batch of ``step`` from its pool epoch: crop, D4, scale to [0, 1]."""
    height, width = settings.crop_hw
    batch = settings.batch_size
    lr_batch, hr_batch = _batch_tensors((batch, 1, height, width), settings.pin_memory)
    lr_out, hr_out = lr_batch.numpy(), hr_batch.numpy()  # (B, 1, h, w), filled in place
    fractions, ops = _crop_draws(settings, step)
    first = (step - pool.epoch * settings.steps_per_pool) * batch
    names, boxes = [], np.zeros((batch, 3), np.int64)
    for i in range(batch):
        index = int(pool.chosen[pool.slots[first + i]])
        lr, hr = pool.images[index]
        y0, x0 = crop_origin(lr.shape, (height, width), fractions[i])
        op = int(ops[i]) if settings.augment else 0
        op = op if height == width else shape_preserving_op(op)
        for source, out in ((lr, lr_out), (hr, hr_out)):
            view = d4_transform(source[y0 : y0 + height, x0 : x0 + width], op)
            to_float(view, out=out[i, 0])  # 8 and 16 bit: each by its own maximum
        names.append(regions[index].pair)
        boxes[i] = (x0, y0, op)
    return {
        "lr": lr_batch,
        "hr": hr_batch,
        "pair": names,
        "step": step,
        "crop": torch.from_numpy(boxes),  # (B, 3): x0, y0 in the region, D4 op
    }


class _TrainEpochs:
    """The training stream cut into pool epochs of ``steps_per_pool`` steps."""

    def __init__(
        self, regions: list[_Region], settings: _TrainSettings, start_step: int, cache_bytes: int
    ):
        self.regions = regions
        self.settings = settings
        self.start_step = start_step
        self.first_epoch = start_step // settings.steps_per_pool
        self.cache = _RegionCache(cache_bytes)

    def epoch_batches(self, epoch: int) -> Iterator[dict]:
        """The batches of one pool epoch, from ``start_step`` on; decodes when started."""
        chosen, slots = _pool_plan(self.settings, len(self.regions), epoch)
        pool = _Pool(epoch, chosen, slots, self.cache.fetch(self.regions, chosen))
        first = epoch * self.settings.steps_per_pool
        for step in range(max(first, self.start_step), first + self.settings.steps_per_pool):
            yield _make_batch(pool, self.regions, self.settings, step)


def _batches(epochs: _TrainEpochs, num_workers: int) -> Iterator[dict]:
    """Batches from ``start_step`` on, made here or by ``num_workers`` threads."""
    if num_workers > 0:
        yield from _threaded_batches(epochs, num_workers)
    else:
        for epoch in count(epochs.first_epoch):
            yield from epochs.epoch_batches(epoch)


def _threaded_batches(epochs: _TrainEpochs, workers: int) -> Iterator[dict]:
    """Worker ``w`` makes every batch of epochs ``first + w, first + w + W, ...``.

    Threads, not DataLoader processes: decoding (OpenCV) and converting (numpy) release
    the GIL, so threads run in parallel, share one region cache, and hand batches over
    without the trip through shared memory that process workers pay (a process variant
    of this loader, 2 workers, gave 146 crops/s of 256^2 where these threads give 961,
    and cost the trainer's thread 340 us per crop where these cost it 4; docs/
    benchmarks.md). Signals reach only the main thread, so the trainer's preemption
    handler is never bypassed, and daemon threads never hold up exit. Each worker keeps
    at most one finished epoch ready; closing this generator stops them.
    """
    handoff = [queue.Queue(maxsize=1) for _ in range(workers)]
    stop = threading.Event()
    threads = []
    for worker in range(workers):
        args = (epochs, worker, workers, handoff[worker], stop)
        name = f"aeatrain-loader-{worker}"
        threads.append(threading.Thread(target=_produce, args=args, name=name, daemon=True))
    live = (stop, tuple(threads))
    with _live_lock:
        _live_streams.add(live)
    for thread in threads:
        thread.start()
    try:
        for turn in count():
            item = handoff[turn % workers].get()
            if isinstance(item, BaseException):
                raise item  # a DatasetError stays one line; a bug keeps its traceback
            yield from item
    finally:
        # Stop AND join: a daemon thread still inside OpenCV or torch when the interpreter
        # exits can abort the process ("terminate called without an active exception").
        stop.set()
        for thread in threads:
            thread.join(timeout=_JOIN_SECONDS)
        with _live_lock:
            _live_streams.discard(live)


_JOIN_SECONDS = 60  # one batch at most: workers check the stop flag between batches
_live_streams: set = set()  # (stop flag, worker threads) of every stream not yet closed
_live_lock = threading.Lock()


@atexit.register
def _stop_live_streams() -> None:
    """At exit, stop and join the workers of streams nobody closed (a process that ends
    after ``next(stream)``): atexit runs while the interpreter is whole, and a worker
    still inside OpenCV or torch when it is torn down can abort the process."""
    with _live_lock:
        live = list(_live_streams)
    for stop, _ in live:
        stop.set()
    for _, threads in live:
        for thread in threads:
            thread.join(timeout=_JOIN_SECONDS)


def _produce(epochs: _TrainEpochs, worker: int, workers: int, out: queue.Queue, stop) -> None:
    """A worker thread's loop: whole epochs into ``out`` until ``stop`` is set (checked
    between batches, so a closed stream stops its workers within one batch)."""
    try:
        for epoch in count(epochs.first_epoch + worker, workers):
            batches = []
            for batch in epochs.epoch_batches(epoch):
                if stop.is_set():
                    return
                batches.append(batch)
            if not _hand_over(out, batches, stop):
                return
    except Exception as err:  # the consumer raises it in the trainer's thread
        _hand_over(out, err, stop)


def _hand_over(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` once there is room; False when told to stop first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _crop_hw(
    crop_size: int | None, regions: list[_Region], where: str, multiple: int
) -> tuple[int, int]:
    """Check the crop size against the smallest training region and the model's input
    multiple; None = the whole region, floored to the multiple."""
    smallest = min(regions, key=lambda r: min(r.height, r.width))
    if crop_size is None:
        height = min(r.height for r in regions) // multiple * multiple
        width = min(r.width for r in regions) // multiple * multiple
        return height, width
    if crop_size <= 0 or crop_size % multiple:
        raise DatasetError(f"crop_size {crop_size} is not a positive multiple of {multiple}")
    if crop_size > min(smallest.height, smallest.width):
        raise DatasetError(
            f"crop_size {crop_size} is larger than the training region of pair "
            f"{smallest.pair!r} ({smallest.width}x{smallest.height}) in {where}"
        )
    return crop_size, crop_size


def default_crops_per_region(regions: Sequence[_Region], crop_hw: tuple[int, int]) -> int:
    """Crops a decoded region serves: about its area over the crop's, at most 16.

    So a decode's pixels are used about once: 14 crops of 256^2 from a 944x960 region, 3
    of 512^2, 1 of the whole region (more would repeat the same picture).
    """
    area = statistics.median(r.height * r.width for r in regions)
    return max(1, min(MAX_CROPS_PER_REGION, round(area / (crop_hw[0] * crop_hw[1]))))


def train_loader(
    source: DataSource,
    *,
    crop_size: int | None,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    augment: bool = False,
    pairs: Sequence[str] | None = None,
    num_workers: int = 0,
    crops_per_region: int | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    cache_mib: float = DEFAULT_CACHE_MIB,
    cache_dir: str | None = None,
    pin_memory: bool = False,
    input_multiple: int = 1,
) -> Iterator[dict]:
    """Endless batches of paired crops from the training regions, starting at ``start_step``.

    Each batch: ``{"lr": float32 (B, 1, h, w) in [0, 1], "hr": same, "pair": list[str],
    "step": int, "crop": int64 (B, 3) [x0, y0, d4 op]}``.

    - ``input_multiple``: the model's (``aeatrain.models.input_multiple``); crop sides
      must be multiples of it. ``crop_size`` None takes the whole training region
      (floored to that multiple; the smallest region when pairs differ); rotations by 90
      degrees are only drawn for square crops.
    - ``crops_per_region`` None: see :func:`default_crops_per_region`.
    - ``cache_mib`` bounds the decoded regions this loader keeps across pools (0:
      decode every pool afresh); it changes speed, never data.
    - ``cache_dir``: a node-local folder into which each shard used is staged once
      (aeatrain/shardio.py); None reads shards where they are. Speed, never data.
    - 8- and 16-bit pairs both map to [0, 1] by their own maximum, through
      ``aeatrain.imageio.to_float`` (the conversion evaluation and prediction use).
    - The batch at step s on this rank is a pure function of (dataset, seed, s, rank,
      crop/augment/pool settings), whatever ``start_step`` and ``num_workers``; see the
      module docstring for the design.
    - ``world_size`` only checks ``rank``: ranks never split the data, they draw from
      all of it with different random streams.
    - ``num_workers`` > 0: that many background threads make batches ahead (see
      :func:`_threaded_batches`); 0: batches are made when asked for.
    - ``pin_memory``: batches in page-locked memory (needs CUDA), so that a
      ``.to("cuda", non_blocking=True)`` runs while the GPU computes.
    """
    if batch_size < 1 or pool_size < 1 or not 0 <= rank < world_size or start_step < 0:
        raise ValueError(
            f"bad loader settings: batch_size={batch_size} pool_size={pool_size} "
            f"rank={rank} world_size={world_size} start_step={start_step}"
        )
    shards, manifest = _resolve(source, "train", cache_dir)
    where = manifest.path if manifest is not None else shards[0].url
    regions = _scan(shards)
    if not regions:
        raise DatasetError(f"{where}: no training samples")
    wanted = _check_pairs(pairs, sorted({r.pair for r in regions}), where)
    chosen = set(wanted)
    regions = [r for r in regions if r.pair in chosen]
    crop_hw = _crop_hw(crop_size, regions, where, input_multiple)
    if crops_per_region is None:
        crops_per_region = default_crops_per_region(regions, crop_hw)
    settings = _TrainSettings(
        seed, rank, batch_size, crop_hw, augment, pool_size, max(1, crops_per_region), pin_memory
    )
    log.info(
        "training stream (rank %d): %d regions of %d pairs, crops %dx%d, pool of %d regions "
        "renewed every %d steps, %d workers",
        rank, len(regions), len(wanted), crop_hw[1], crop_hw[0], pool_size,
        settings.steps_per_pool, num_workers,
    )  # fmt: skip
    epochs = _TrainEpochs(regions, settings, start_step, cache_bytes=int(cache_mib * 2**20))
    return _batches(epochs, num_workers)


# ----------------------------------------------------------------------------- evaluation


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
    region: dict  # x0, y0, x1, y1 in the registered image
    meta: dict  # the sample's json


@dataclass
class FullImage:
    """A whole registered pair; ``lr`` and ``hr`` are (H, W) uint8|uint16."""

    pair: str
    index: int
    lr: np.ndarray
    hr: np.ndarray
    bit_depth: int
    test_regions: dict[str, dict]
    train_region: dict
    meta: dict

    def test_tile(self, tile_id: str) -> TestTile:
        """Test region ``tile_id`` cut out of the whole image: the pixels of the ``test``
        split's sample of that id (``meta`` stays the whole image's json)."""
        region = self.test_regions[tile_id]
        window = region_window(region)
        index = self.index * len(self.test_regions) + sorted(self.test_regions).index(tile_id)
        return TestTile(
            self.pair, tile_id, index, self.lr[window], self.hr[window], self.bit_depth,
            region, self.meta,
        )  # fmt: skip


def region_window(region: dict) -> tuple[slice, slice]:
    """The (rows, columns) slices of a region ``{"x0", "y0", "x1", "y1"}`` (x1/y1 exclusive)."""
    return slice(region["y0"], region["y1"]), slice(region["x0"], region["x1"])


def _ordered_samples(
    shards: Sequence[Shard], wanted: set[str] | None, rank: int, world_size: int
) -> Iterator[tuple[int, str, str, dict, dict]]:
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
                meta = _decode_meta(shard.url, sample.key, files)
                yield position, shard.url, sample.key, meta, files


def _eval_stream(
    source: DataSource, split: str, pairs: Sequence[str] | None, cache_dir: str | None
) -> tuple[list[Shard], set[str] | None]:
    shards, manifest = _resolve(source, split, cache_dir)
    if pairs is None:
        return shards, None
    if manifest is not None:
        known, where = manifest.pair_names, manifest.path
    else:
        known, where = sorted({r.pair for r in _scan(shards)}), shards[0].url
    return shards, set(_check_pairs(pairs, known, where))


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
        lr, hr = _decode_pair(url, key, files)
        depth = 8 if lr.dtype == np.uint8 else 16
        yield TestTile(
            meta["pair"], meta.get("region_id", ""), index, lr, hr, depth, meta["region"], meta
        )


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
        lr, hr = _decode_pair(url, key, files)
        if "test_regions" not in meta or "train_region" not in meta:
            raise DatasetError(f"{url}: sample {key} json lacks test_regions/train_region")
        depth = 8 if lr.dtype == np.uint8 else 16
        yield FullImage(
            meta["pair"], index, lr, hr, depth, meta["test_regions"], meta["train_region"], meta
        )
