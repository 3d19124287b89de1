"""Writing WebDataset shards and the dataset manifest (docs/formats.md, section 2).

The one place that knows how a registered region becomes a WebDataset sample and how
``manifest.json`` is laid out; ``aeatrain/data.py`` is the one place that reads them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from aeatrain import __version__

FORMAT = "aeatrain-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "test", "full")
SHARD_PATTERN = "{split}-%06d.tar"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


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


@dataclass
class ShardInfo:
    file: str
    samples: int
    sha256: str

    def as_dict(self) -> dict:
        return {"file": self.file, "samples": self.samples, "sha256": self.sha256}


def pair_key(pair: str) -> str:
    """A pair name as a key and file name: only [A-Za-z0-9_-%], unique and reversible.

    Names of [A-Za-z0-9_-] stay as they are; every other character becomes the %XX
    escapes of its UTF-8 bytes (``"a b"`` -> ``"a%20b"``, ``"α-Fe2O3"`` ->
    ``"%CE%B1-Fe2O3"``), so no two names share a key. A dot would split WebDataset's
    extension, a slash make a folder. ``urllib.parse.unquote`` gives the name back.
    """
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode("utf-8")), pair)


def sample_key(pair: str, region_id: str) -> str:
    """WebDataset key of a region: ``<pair_key(pair)>__<region_id>``."""
    return f"{pair_key(pair)}__{region_id}"


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
        "json": json.dumps(sample.meta, sort_keys=True).encode("utf-8"),
    }


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def write_split(
    out_dir: str | Path,
    split: str,
    samples: Iterable[Sample],
    *,
    max_samples_per_shard: int = 64,
    max_bytes_per_shard: int = 512 << 20,
) -> list[ShardInfo]:
    """Write ``samples`` as ``<split>-%06d.tar`` shards with webdataset's ShardWriter."""
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
    return [ShardInfo(name, n, sha256_file(out_dir / name)) for name, n in sorted(counts.items())]


def build_manifest(
    *,
    shards: dict[str, list[ShardInfo]],
    pairs: dict[str, dict],
    rejected: dict[str, str],
    protocol: dict,
    scale: float,
    bar_row: int | None,
    command: str,
    bar_from_metadata: bool = False,
) -> dict:
    """The manifest dict of docs/formats.md; ``pairs`` maps name -> size, bit depth, region."""
    return {
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
                "shards": [s.as_dict() for s in infos],
            }
            for split, infos in shards.items()
        },
    }


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
