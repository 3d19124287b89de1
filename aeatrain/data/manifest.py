"""A DATA folder's ``manifest.json`` read and checked, its shards' indexes, its identity.

:func:`load_manifest` opens ``manifest.json`` (a DATA folder, a DATA root URL or the file
itself) and, for a local folder, checks that every listed shard and index exists; it
reads nothing else. :meth:`DatasetManifest.shards` reads the build-time index of each
shard of a split (aeatrain/data/format.py) when a stream first asks for it; no tar header
is scanned and no shard hashed at start-up, so start-up costs the same for 22 pairs as
for 10,000. :func:`verify_dataset` hashes whole datasets (``python -m data_prep verify
DATA``, ``train.py --check`` with ``data.verify``); :func:`check_pairs` is the one check
of pair names against a dataset. Torch-free: the run folder and data_prep import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from aeatrain.data import shardio
from aeatrain.data.format import (
    MANIFEST_NAME,
    DatasetError,
    IndexedSample,
    Manifest,
    PairInfo,
    ShardEntry,
    ShardIndex,
    manifest_from_json,
    parse_json,
    sha256_bytes,
    verify_shards,
)

_INDEX_READERS = 8  # index files of a remote root fetched at once


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
    typed: Manifest = field(repr=False)  # the whole manifest as read, checked
    _shards: dict = field(default_factory=dict, repr=False, compare=False)  # split -> [Shard]

    @property
    def scale(self) -> float:
        return self.typed.scale

    @property
    def bit_depths(self) -> list[int]:
        return list(self.typed.bit_depths)

    @property
    def pairs(self) -> dict[str, PairInfo]:
        """Pair name -> its size, bit depth and training region (and any further keys the
        writer added, in ``model_extra``)."""
        return self.typed.pairs

    @property
    def pair_names(self) -> list[str]:
        return sorted(self.typed.pairs)

    def shard_urls(self, split: str) -> list[str]:
        """Paths (or URLs) of the split's shards, in manifest order (pair-name order)."""
        return [shardio.join(self.root, s.file) for s in self.entries(split)]

    def samples(self, split: str) -> int:
        return self._split(split).samples

    def entries(self, split: str) -> list[ShardEntry]:
        return self._split(split).shards

    def all_entries(self) -> list[ShardEntry]:
        """Every split's shards, in manifest order."""
        return [entry for split in self.typed.splits.values() for entry in split.shards]

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
            missing = sorted(set(self.typed.pairs) - held)
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
        splits = self.typed.splits
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
        problems = verify_dataset(manifest, workers=workers)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DatasetError(problems[0] + more)
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
            for name, info in sorted(manifest.pairs.items())
        },
        "splits": {
            split: [[shard.sha256, shard.samples] for shard in manifest.entries(split)]
            for split in sorted(manifest.typed.splits)
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
    typed = manifest_from_json(data, path)
    root = path.rpartition("/")[0] if "://" in path else str(Path(path).parent)
    return DatasetManifest(root, path, sha256_bytes(data), typed)


def _check_files(manifest: DatasetManifest, root: Path) -> None:
    """Every listed shard and index exists (a stat each; nothing is read)."""
    folder = str(root)
    for split, entry in manifest.typed.splits.items():
        for shard in entry.shards:
            for name, what in ((shard.file, "shard"), (shard.index, "index of a shard")):
                path = os.path.join(folder, name)
                if not os.path.isfile(path):
                    raise DatasetError(
                        f"{path}: {split} {what} listed in {manifest.path} is missing"
                    )


def verify_dataset(manifest: DatasetManifest, *, workers: int = 4) -> list[str]:
    """Hash every shard, index and member of a local DATA folder against the manifest, on
    ``workers`` threads with a progress bar: the problems found, one line each (none: the
    data is sound). ``python -m data_prep verify`` and ``load_manifest(...,
    verify_checksums=True)`` (``train.py`` with ``data.verify``) both verify through here."""
    root = shardio.local_path(manifest.root)
    if root is None:
        raise DatasetError(
            f"{manifest.root}: only a local DATA folder can be verified (stage it first)"
        )
    entries = manifest.all_entries()
    with tqdm(total=len(entries), desc="verify", unit="shard") as bar:
        return verify_shards(root, entries, workers=workers, progress=bar.update)


def check_pairs(
    wanted: str | Sequence[str] | None,
    known: Sequence[str],
    where: str,
    *,
    option: str | None = None,
) -> list[str]:
    """The pairs to use (None: all ``known``), sorted, each once.

    A name not in ``known`` raises :class:`DatasetError`: one line naming it, ``where`` the
    pairs were looked for (a manifest or a shard) and the pairs there are, after the
    ``option`` the names came from (``--pairs``) when one is given. The loader, the
    evaluation streams and the ``--pairs`` of evaluate and lbnlm all check through here.
    """
    if wanted is None:
        return sorted(known)
    if isinstance(wanted, str):
        wanted = [wanted]
    missing = sorted(set(wanted) - set(known))
    if missing:
        held = sorted(known)
        listed = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
        raise DatasetError(
            f"{f'{option}: ' if option else ''}no pair named {', '.join(map(repr, missing))} "
            f"in {where} (it has {len(held)}: {listed})"
        )
    return sorted(set(wanted))
