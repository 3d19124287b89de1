"""Writing WebDataset shards, their indexes and the dataset manifest (docs/formats.md §2).

The one place that writes a registered region as a WebDataset sample; the layout of the
sample json, the shard index and ``manifest.json`` (models, constants, hashing) lives in
``aeatrain/data/format.py``, shared with the readers in ``aeatrain/data/``.
"""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from aeatrain import __version__
from aeatrain.data.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_PATTERN,
    SPLITS,
    Manifest,
    SampleMeta,
    ShardEntry,
    index_tar,
    read_manifest_to_upgrade,
    sample_key,
    save_index,
    write_index,
)
from aeatrain.errors import UserError, reporting_write_errors
from aeatrain.files.atomic import atomic_write_text


@dataclass
class Sample:
    """One region of a registered pair: ``lr`` and ``hr`` are (H, W) uint8|uint16."""

    pair: str
    region_id: str  # "train", "test0".."test2" or "full"
    lr: np.ndarray
    hr: np.ndarray
    meta: dict = field(default_factory=dict)  # the sample's json (docs/formats.md)

    @property
    def key(self) -> str:
        return sample_key(self.pair, self.region_id)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG at the image's own bit depth (uint8 or uint16)."""
    if image.dtype not in (np.uint8, np.uint16) or image.ndim != 2:
        raise ValueError(f"expected an (H, W) uint8/uint16 image, got {image.dtype} {image.shape}")
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def encode_sample(sample: Sample) -> dict:
    """The dict ShardWriter writes: ``__key__``, ``lr.png``, ``hr.png``, ``json``."""
    if sample.lr.shape != sample.hr.shape or sample.lr.dtype != sample.hr.dtype:
        raise ValueError(
            f"{sample.key}: lr {sample.lr.shape} {sample.lr.dtype} and hr "
            f"{sample.hr.shape} {sample.hr.dtype} differ"
        )
    return {
        "__key__": sample.key,
        "lr.png": encode_png(sample.lr),
        "hr.png": encode_png(sample.hr),
        "json": json.dumps(_checked_meta(sample), sort_keys=True).encode("utf-8"),
    }


def _checked_meta(sample: Sample) -> dict:
    """The sample's json as written, checked against :class:`SampleMeta` (a bug if not)."""
    return SampleMeta.model_validate(sample.meta).as_dict()


def write_split(
    out_dir: str | Path,
    split: str,
    samples: Iterable[Sample],
    *,
    max_samples_per_shard: int = 64,
    max_bytes_per_shard: int = 512 << 20,
) -> list[ShardEntry]:
    """Write ``samples`` as ``<split>-%06d.tar`` shards with webdataset's ShardWriter, and
    beside each its index (``<split>-%06d.index.json``), read back from the written file."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    pattern = str(out_dir / SHARD_PATTERN.format(split=split))
    # imported here: webdataset imports torch (seconds), which the build's worker
    # processes, importing this module, do not need
    import webdataset as wds

    with wds.ShardWriter(
        pattern, maxcount=max_samples_per_shard, maxsize=max_bytes_per_shard, verbose=0
    ) as writer:
        for sample in samples:
            writer.write(encode_sample(sample))
            name = Path(writer.fname).name
            counts[name] = counts.get(name, 0) + 1
    return [_indexed(out_dir / name, n) for name, n in sorted(counts.items())]


def _indexed(shard: Path, samples: int) -> ShardEntry:
    index, index_path, index_sha256 = write_index(shard)
    if len(index.samples) != samples:
        raise RuntimeError(f"{shard}: wrote {samples} samples, indexed {len(index.samples)}")
    return ShardEntry(
        file=shard.name,
        samples=samples,
        sha256=index.shard_sha256,
        index=index_path.name,
        index_sha256=index_sha256,
    )


def build_manifest(
    *,
    shards: dict[str, list[ShardEntry]],
    pairs: dict[str, dict],
    rejected: dict[str, str],
    protocol: dict,
    scale: float,
    bar_row: int | None,
    command: str,
    bar_from_metadata: bool = False,
) -> dict:
    """The manifest dict of docs/formats.md; ``pairs`` maps name -> size, bit depth, region.

    Checked against :class:`aeatrain.data.format.Manifest` (keys it does not know, such as
    per-pair metadata, are kept)."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "protocol": protocol,
        "bar_row": bar_row,
        "bar_from_metadata": bar_from_metadata,
        "scale": float(scale),
        "bit_depths": sorted({int(p["bit_depth"]) for p in pairs.values()}),
        "pairs": pairs,
        "rejected": rejected,
        "splits": {
            split: {
                "samples": sum(s.samples for s in infos),
                "shards": [s.model_dump(mode="json") for s in infos],
            }
            for split, infos in shards.items()
        },
    }
    return Manifest.model_validate(manifest).as_dict()


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text, overwrite=True)
    return path


def add_indexes(root: str | Path) -> int:
    """Upgrade a format_version 1 DATA folder in place: write each shard's index beside it
    and the manifest as version 2 (replaced atomically, last). Returns the shards indexed
    (0: already version 2). Raises UserError for anything but a version 1 or 2 dataset,
    or a shard whose sha256 is no longer the manifest's."""
    root = Path(root)
    path = root / MANIFEST_NAME
    old = read_manifest_to_upgrade(path)
    if old is None:
        return 0
    shards = [shard for split in old.splits.values() for shard in split.shards]
    indexes = []  # every shard indexed and checked before the first index is written
    for shard in shards:
        try:
            index = index_tar(root / shard.file)
        except (OSError, ValueError, tarfile.TarError) as err:
            raise UserError(f"{root / shard.file}: cannot index ({err})") from None
        if index.shard_sha256 != shard.sha256:
            raise UserError(f"{root / shard.file}: sha256 differs from {path}; rebuild")
        indexes.append(index)
    written = []
    try:
        with reporting_write_errors(root):
            for shard, index in zip(shards, indexes):
                index_path, index_sha256 = save_index(index, root / shard.file)
                written.append(index_path)
                shard.index, shard.index_sha256 = index_path.name, index_sha256
            raw = {**old.model_dump(mode="json"), "format_version": FORMAT_VERSION}
            try:
                upgraded = Manifest.model_validate(raw).as_dict()
            except ValueError as err:
                raise UserError(f"{path}: {err}") from None
            write_manifest(root, upgraded)
    except BaseException:  # all or nothing: a version 1 dataset has no index files
        for index_path in written:
            index_path.unlink(missing_ok=True)
        raise
    return len(shards)
