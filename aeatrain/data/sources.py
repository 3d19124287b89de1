"""What a data source names, resolved to indexed shards, and their samples decoded.

A source is a DATA folder (or its ``manifest.json``), a DATA root URL
(``https://host/DATA``), a :class:`~aeatrain.data.manifest.DatasetManifest` already
loaded, or explicit shard URLs (a list, or a webdataset brace pattern such as
``"pipe:curl -s https://host/train-{000000..000003}.tar"``) for reading from elsewhere
without a manifest. The streams (aeatrain/data/loader.py, aeatrain/data/streams.py) all
read through here:

- the bytes come through aeatrain/data/shardio.py: local files at the index's offsets,
  ``http(s)://`` shards by range requests (only the members a rank decodes), or copies
  staged once per node into ``cache_dir``; ``pipe:`` shards are staged;
- each member is checked against its index's sha256 when it is read
  (:meth:`~aeatrain.data.manifest.Shard.read`), which covers exactly the bytes used;
- PNGs are decoded by OpenCV into (H, W) uint8|uint16 arrays, LR and HR checked to match.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from webdataset.shardlists import expand_urls

from aeatrain.data import shardio
from aeatrain.data.format import (
    DatasetError,
    IndexedSample,
    SampleMeta,
    ShardIndex,
    index_name,
    index_tar,
    parse_json,
)
from aeatrain.data.manifest import DatasetManifest, Shard, load_manifest

DataSource = str | os.PathLike | Sequence[str] | DatasetManifest


def resolve(
    source: DataSource, split: str, cache_dir: str | None = None
) -> tuple[list[Shard], DatasetManifest | None]:
    """The shards of ``split`` with their indexes, and the manifest (None for shard URLs)."""
    if isinstance(source, DatasetManifest):
        return source.shards(split, cache_dir), source
    urls = shard_urls(source)
    if urls is not None:
        return [_unlisted_shard(url, cache_dir) for url in urls], None
    manifest = load_manifest(source)
    return manifest.shards(split, cache_dir), manifest


def shard_urls(source: str | os.PathLike | Sequence[str]) -> list[str] | None:
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


def decode_pair(url: str, key: str, files: dict) -> tuple[np.ndarray, np.ndarray]:
    """(lr, hr), (H, W) uint8|uint16 each, checked to match."""
    lr = _decode_png(url, key, files, "lr.png")
    hr = _decode_png(url, key, files, "hr.png")
    if lr.shape != hr.shape or lr.dtype != hr.dtype:
        raise DatasetError(
            f"{url}: sample {key}: lr {lr.shape} {lr.dtype} and hr {hr.shape} {hr.dtype} differ"
        )
    return lr, hr


def decode_meta(url: str, key: str, files: dict) -> SampleMeta:
    try:
        return parse_json(files["json"], SampleMeta)
    except (KeyError, ValueError) as err:
        raise DatasetError(f"{url}: sample {key} has no valid json ({err})") from None


@dataclass(frozen=True, slots=True)
class IndexedRegion:
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


def scan(shards: Sequence[Shard]) -> list[IndexedRegion]:
    """Every sample of ``shards`` in stream order, from their indexes."""
    regions = []
    for shard in shards:
        for sample in shard.index.samples:
            box = sample.region
            regions.append(IndexedRegion(shard, sample, sample.pair, box.width, box.height))
    return regions


def pair_names(source: DataSource) -> list[str]:
    """Names of the registered pairs of a dataset (or of the given train shards), sorted."""
    if isinstance(source, DatasetManifest) or shard_urls(source) is None:
        return load_manifest(source).pair_names
    shards, _ = resolve(source, "train")
    return sorted({region.pair for region in scan(shards)})
