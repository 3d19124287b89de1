"""The dataset format of docs/formats.md §2 in one place: constants, typed models, hashing.

``data_prep`` writes DATA folders through these models and the rest of ``aeatrain.data``
reads them through the same ones, so the writer and the reader cannot drift apart. This
module imports neither torch nor OpenCV: data_prep's worker processes import it.

Three documents, each a pydantic model:

- :class:`Manifest` (``manifest.json``): what the DATA folder holds, per split the shards
  with their sha256 and their index file;
- :class:`SampleMeta` (a sample's ``json`` member): the pair, the region, the
  registration figures;
- :class:`ShardIndex` (``<shard>.index.json``, one per shard, written at build time):
  every sample's key, pair, region and its members' byte offsets, sizes and sha256 in the
  tar, so a reader seeks (or sends an HTTP range request) straight to the bytes it needs
  and never scans tar headers; the member hashes check exactly the bytes read.

Newer writers may add keys (as the per-pair ``pixel_size_nm`` and vendor metadata once were):
the manifest, pair, shard and sample models accept and keep unknown keys
(``extra="allow"``), so an older reader still opens a newer dataset of the same
``format_version``; a change a reader must understand bumps ``format_version``. The
index, written and read only by this module, is strict (``extra="forbid"``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aeatrain.errors import UserError

FORMAT = "aeatrain-dataset"
FORMAT_VERSION = 2  # 2: every shard has an index file (1: none; `data_prep index` adds them)
INDEX_FORMAT = "aeatrain-shard-index"
INDEX_FORMAT_VERSION = 1
PROTOCOL_NAME = "paper-split-v1"  # the split datasets are cut by (aeatrain/protocol/split.py)
PROTOCOLS = (PROTOCOL_NAME,)
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "test", "full")
SHARD_PATTERN = "{split}-%06d.tar"
INDEX_SUFFIX = ".index.json"
MEMBERS = ("lr.png", "hr.png", "json")  # the members of every sample
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# a pair key names files (qc/<key>.png, <key>.lr.npy) and tar members (<key>__test0.lr.png):
# at most this long, every such name stays under the 255-byte limit of file systems
MAX_KEY_CHARS = 240


class DatasetError(UserError):
    """A dataset that cannot be used as asked; the message names the file, key or setting."""


class _Open(BaseModel):
    """A document newer writers may extend: unknown keys are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- documents


class Region(_Strict):
    """A box in registered (HR-frame) pixel coordinates, ``x1``/``y1`` exclusive."""

    x0: int = Field(ge=0)
    y0: int = Field(ge=0)
    x1: int
    y1: int

    @model_validator(mode="after")
    def _not_empty(self) -> Region:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"empty region {self.as_dict()}")
        return self

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def window(self) -> tuple[slice, slice]:
        """The (rows, columns) slices that cut this region out of an (H, W) image."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def as_dict(self) -> dict[str, int]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}


class ImageSize(_Open):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class PixelSizes(_Strict):
    """Nanometres per pixel that each raw file's microscope recorded (None: it did not;
    aeatrain/files/microscope.py). The registered pair is in the HR frame: ``hr`` wide pixels."""

    lr: float | None = Field(default=None, gt=0)
    hr: float | None = Field(default=None, gt=0)


class BarRows(_Strict):
    """The row each raw file's data bar was cut at (None: not cut)."""

    lr: int | None = Field(default=None, ge=1)
    hr: int | None = Field(default=None, ge=1)


class MicroscopeRecord(_Open):
    """One file's vendor metadata (aeatrain.files.microscope.Calibration.as_record); ``hv_kv``,
    ``detector`` and ``system`` come as extra keys where the vendor records them."""

    vendor: Literal["fei", "zeiss", "tescan", "jeol", "imagej"]
    pixel_size_nm: float | None = Field(default=None, gt=0)
    magnification: float | None = Field(default=None, gt=0)
    bar_row: int | None = Field(default=None, ge=1)


class Microscope(_Strict):
    """Both files' vendor metadata (None: a file without any)."""

    lr: MicroscopeRecord | None = None
    hr: MicroscopeRecord | None = None


class SampleMeta(_Open):
    """A sample's ``json`` member. ``test_regions``/``train_region``: ``full`` samples only."""

    pair: str
    region_id: str  # "train", "test0".."test2" or "full"
    split: Literal["train", "test", "full"]
    region: Region
    image_size: ImageSize
    bit_depth: Literal[8, 16]
    scale: float
    registration: dict
    sources: dict
    test_regions: dict[str, Region] | None = None
    train_region: Region | None = None
    # what the microscope recorded; as_dict leaves out what it did not ({} for BMPs)
    pixel_size_nm: PixelSizes | None = None
    microscope: Microscope | None = None

    def as_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


class PairInfo(_Open):
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    bit_depth: Literal[8, 16]
    train_region: Region
    pixel_size_nm: PixelSizes | None = None  # None: a dataset built before they were kept
    bar_rows: BarRows | None = None
    bar_sources: dict[str, str | None] | None = None  # why each row was cut (None: older)


class ShardEntry(_Open):
    file: str  # relative to the DATA root
    samples: int = Field(ge=0)
    sha256: str
    index: str  # the index file, relative to the DATA root
    index_sha256: str


class SplitEntry(_Open):
    samples: int = Field(ge=0)
    shards: list[ShardEntry]


class Protocol(_Open):
    name: Literal[PROTOCOLS]  # type: ignore[valid-type]


class Manifest(_Open):
    """``manifest.json``: the one file a reader opens before the indexes."""

    format: Literal["aeatrain-dataset"]
    format_version: int
    tool_version: str
    created: str
    command: str
    protocol: Protocol
    bar_row: int | None
    bar_from_metadata: bool = False  # rows the vendor metadata records were used (FEI)
    scale: float = Field(gt=0)
    bit_depths: list[int]
    pairs: dict[str, PairInfo]
    rejected: dict[str, str]
    splits: dict[str, SplitEntry]

    def as_dict(self) -> dict:
        """The document as read or built: fields with defaults that it did not have (an
        older dataset's missing ``bar_from_metadata``, a pair's ``pixel_size_nm``) stay out."""
        return self.model_dump(mode="json", exclude_unset=True)


class ShardEntryV1(_Open):
    file: str
    samples: int = Field(ge=0)
    sha256: str


class SplitEntryV1(_Open):
    samples: int = Field(ge=0)
    shards: list[ShardEntryV1]


class ManifestV1(_Open):
    """A ``format_version`` 1 manifest (no shard indexes), read only to upgrade it
    (``data_prep index``); the keys of :class:`Manifest` besides its splits are kept."""

    format: Literal["aeatrain-dataset"]
    format_version: Literal[1]
    splits: dict[str, SplitEntryV1]


class Member(_Strict):
    offset: int = Field(ge=0)  # of the member's data in the tar, bytes
    size: int = Field(ge=0)
    sha256: str


class IndexedSample(_Strict):
    key: str
    pair: str
    region_id: str
    region: Region
    members: dict[str, Member]  # extension ("lr.png", "hr.png", "json") -> where it lies


class ShardIndex(_Strict):
    """``<shard>.index.json``: where every member of one shard lies, in stream order."""

    format: Literal["aeatrain-shard-index"] = INDEX_FORMAT
    format_version: Literal[1] = INDEX_FORMAT_VERSION
    shard: str  # the shard's file name
    shard_bytes: int = Field(ge=0)
    shard_sha256: str
    samples: list[IndexedSample]

    @model_validator(mode="after")
    def _one_place_per_member(self) -> ShardIndex:
        """Each key once, each member's bytes inside the shard and nobody else's: an index
        that lists a sample twice (and so another not at all) or points past the shard's
        end is not this shard's."""
        keys: set[str] = set()
        spans = []
        for sample in self.samples:
            if sample.key in keys:
                raise ValueError(f"sample {sample.key} is listed twice")
            keys.add(sample.key)
            for ext, member in sample.members.items():
                end = member.offset + member.size
                if end > self.shard_bytes:
                    raise ValueError(
                        f"sample {sample.key}: {ext} ends at byte {end}, past the shard's "
                        f"{self.shard_bytes} bytes"
                    )
                spans.append((member.offset, end, f"{sample.key}.{ext}"))
        spans.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                raise ValueError(f"members {first} and {second} share bytes of the shard")
        return self

    def to_json(self) -> str:
        return self.model_dump_json() + "\n"


# ----------------------------------------------------------------------------- names


def pair_key(pair: str) -> str:
    """A pair name as a key and file name: only [A-Za-z0-9_-%], unique and reversible.

    Names of [A-Za-z0-9_-] stay as they are; every other character becomes the %XX
    escapes of its UTF-8 bytes (``"a b"`` -> ``"a%20b"``, ``"α-Fe2O3"`` ->
    ``"%CE%B1-Fe2O3"``), so no two names share a key. A dot would split WebDataset's
    extension, a slash make a folder. ``urllib.parse.unquote`` gives the name back.
    """
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode("utf-8")), pair)


def control_character(text: str) -> str | None:
    """The first control character of ``text`` (a newline, a tab, ...), or None."""
    found = _CONTROL.search(text)
    return found[0] if found else None


def pair_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a pair, or None: a control character (a newline or tab
    would break every listing of names) or a key (:func:`pair_key`) over MAX_KEY_CHARS."""
    control = control_character(name)
    if control:
        return f"pair name {name!r} holds a control character ({control!r}); use another name"
    key = pair_key(name)
    if len(key) > MAX_KEY_CHARS:
        return (
            f"pair name {name[:40]!r}... is too long: its key (the file names made from it, "
            f"non-ASCII letters escaped as %XX) is {len(key)} characters, at most "
            f"{MAX_KEY_CHARS} fit a file name; use a shorter name"
        )
    return None


def sample_key(pair: str, region_id: str) -> str:
    """WebDataset key of a region: ``<pair_key(pair)>__<region_id>``."""
    return f"{pair_key(pair)}__{region_id}"


def index_name(shard_file: str) -> str:
    """``train-000000.tar`` -> ``train-000000.index.json`` (beside the shard)."""
    return shard_file.removesuffix(".tar") + INDEX_SUFFIX


def split_member_name(name: str) -> tuple[str | None, str]:
    """``dir/pair__train.lr.png`` -> (``dir/pair__train``, ``lr.png``): webdataset's rule,
    the extension starts at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


# ----------------------------------------------------------------------------- parsing


def validation_message(err: ValidationError) -> str:
    """The first problem of a pydantic error as ``dotted.key: what``."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def parse_json(data: bytes, model: type[BaseModel]):
    """``model`` from JSON bytes; raises ValueError with one line saying what is wrong."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"not valid JSON ({err})") from None
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ValueError(validation_message(err)) from None


def read_document(path: str | Path, model: type[BaseModel], what: str):
    """``model`` from the JSON file ``path``, the one way aeatrain reads back its own JSON
    formats; UserError in one line naming the file and, for a wrong field, its dotted key
    (``what``: the document, as "a manifest of data_prep build")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except OSError as err:
        raise UserError(f"{path}: unreadable ({err.strerror or err})") from None
    try:
        return parse_json(data, model)
    except ValueError as err:
        raise UserError(f"{path}: not {what} ({err})") from None


def manifest_from_json(data: bytes, path: str) -> Manifest:
    """``manifest.json``'s bytes (read from ``path``, a file or URL) checked: format,
    format_version, protocol, then every field; :class:`DatasetError` naming the file and
    the field. The one reader of the manifest (``aeatrain.data.manifest``, ``data_prep``)."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: not a dataset manifest (top level is not an object)")
    if raw.get("format") != FORMAT:
        raise DatasetError(f"{path}: format is {raw.get('format')!r}, expected {FORMAT!r}")
    version = raw.get("format_version")
    if version == 1:
        raise DatasetError(
            f"{path}: format_version 1 has no shard indexes; add them once with "
            f"`python -m data_prep index DATA` (or rebuild the dataset)"
        )
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format_version is {version!r}; this aeatrain reads version {FORMAT_VERSION}"
        )
    protocol = raw.get("protocol")
    name = protocol.get("name") if isinstance(protocol, dict) else None
    if name not in PROTOCOLS:
        raise DatasetError(f"{path}: protocol.name is {name!r}, expected one of {list(PROTOCOLS)}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        raise DatasetError(f"{path}: {validation_message(err)}") from None


def read_manifest(path: str | Path) -> Manifest:
    """A local ``manifest.json`` (:func:`manifest_from_json`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: not found (expected a DATA folder from data_prep build)"
        ) from None
    except OSError as err:
        raise DatasetError(f"{path}: unreadable ({err.strerror or err})") from None
    return manifest_from_json(data, str(path))


class _ManifestHeader(_Open):
    format: Literal["aeatrain-dataset"]
    format_version: int


def read_manifest_to_upgrade(path: str | Path) -> ManifestV1 | None:
    """The version 1 manifest ``data_prep index`` upgrades; None when ``path`` is a
    version 2 one already (checked as :func:`read_manifest` does). UserError for any
    other document, naming the file and the field."""
    what = "an aeatrain dataset manifest of format_version 1 or 2"
    header = read_document(path, _ManifestHeader, what)
    if header.format_version == FORMAT_VERSION:
        read_manifest(path)
        return None
    return read_document(path, ManifestV1, what)


# ----------------------------------------------------------------------------- hashing

_BLOCK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_bytes: int = _BLOCK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def index_tar(path: str | Path) -> ShardIndex:
    """Index a local shard in one pass: the shard's sha256, every member's offset, size and
    sha256, each sample's pair and region from its json. Raises ValueError (one line) for
    a tar that is not a dataset shard."""
    path = Path(path)
    whole = hashlib.sha256()
    samples: dict[str, dict] = {}
    with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar:
            key, ext = split_member_name(member.name)
            if not member.isreg() or key is None:
                continue
            data = tar.extractfile(member).read()
            entry = samples.setdefault(key, {"key": key, "members": {}})
            if ext in entry["members"]:  # builds before pair_key gave some names one key
                raise ValueError(f"sample {key} holds {ext} twice (two pairs share its key)")
            entry["members"][ext] = Member(
                offset=member.offset_data, size=member.size, sha256=sha256_bytes(data)
            )
            if ext == "json":
                meta = parse_json(data, SampleMeta)
                entry.update(pair=meta.pair, region_id=meta.region_id, region=meta.region)
        handle.seek(0)
        while block := handle.read(_BLOCK):
            whole.update(block)
    indexed = []
    for key, entry in samples.items():
        missing = [ext for ext in MEMBERS if ext not in entry["members"]]
        if missing:
            raise ValueError(f"sample {key} has no {', '.join(missing)}")
        indexed.append(IndexedSample(**entry))
    return ShardIndex(
        shard=path.name,
        shard_bytes=path.stat().st_size,
        shard_sha256=whole.hexdigest(),
        samples=indexed,
    )


def save_index(index: ShardIndex, shard_path: str | Path) -> tuple[Path, str]:
    """Write ``index`` as ``<shard>.index.json`` beside the shard; (path, its sha256)."""
    text = index.to_json().encode("utf-8")
    target = Path(shard_path).with_name(index_name(Path(shard_path).name))
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(text)
    os.replace(partial, target)  # never a half-written index under the real name
    return target, sha256_bytes(text)


def write_index(shard_path: str | Path) -> tuple[ShardIndex, Path, str]:
    """Index a local shard and write ``<shard>.index.json`` beside it; (index, path, sha256)."""
    index = index_tar(shard_path)
    return (index, *save_index(index, shard_path))


# ----------------------------------------------------------------------------- verifying


def check_shard(root: Path, entry: ShardEntry) -> str | None:
    """Everything about one listed shard, hashing every byte: None when sound, else a line
    naming the file and what is wrong."""
    shard, index_path = root / entry.file, root / entry.index
    for path in (shard, index_path):
        if not path.is_file():
            return f"{path}: missing"
    data = index_path.read_bytes()
    if sha256_bytes(data) != entry.index_sha256:
        return f"{index_path}: sha256 differs from the manifest (changed or corrupt index)"
    try:
        index = parse_json(data, ShardIndex)
    except ValueError as err:
        return f"{index_path}: not a shard index ({err})"
    if index.shard_sha256 != entry.sha256 or len(index.samples) != entry.samples:
        return f"{index_path}: indexes another shard than the manifest's {entry.file}"
    return _check_shard_bytes(shard, entry, index)


def _check_shard_bytes(shard: Path, entry: ShardEntry, index: ShardIndex) -> str | None:
    """The shard read once, indexed afresh (index_tar) and compared with its index: the
    same bytes as the manifest says, the same samples, every member where the index says."""
    if shard.stat().st_size != index.shard_bytes:
        return f"{shard}: {shard.stat().st_size} bytes, its index says {index.shard_bytes}"
    try:
        found = index_tar(shard)
    except (ValueError, tarfile.TarError) as err:
        if sha256_file(shard) != entry.sha256:
            return f"{shard}: sha256 differs from the manifest (changed or corrupt shard)"
        return f"{shard}: not a readable dataset shard ({err})"
    if found.shard_sha256 != entry.sha256:
        return f"{shard}: sha256 differs from the manifest (changed or corrupt shard)"
    listed = {sample.key: sample for sample in index.samples}
    for sample in found.samples:
        if sample.key not in listed:
            return f"{shard}: sample {sample.key} is missing from its index"
        for ext, member in sample.members.items():
            if listed[sample.key].members.get(ext) != member:
                return f"{shard}: sample {sample.key}: {ext} differs from its index"
        if listed.pop(sample.key) != sample:
            return f"{shard}: sample {sample.key}: pair or region differs from its index"
    if listed:
        return f"{shard}: its index lists sample {next(iter(listed))}, which the shard lacks"
    return None


def verify_shards(
    root: Path,
    entries: Iterable[ShardEntry],
    *,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Check every shard with :func:`check_shard` on ``workers`` threads (hashing releases
    the GIL); returns the problems found, in manifest order. ``progress(n)`` is called as
    shards finish."""
    entries = list(entries)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(check_shard, root, entry) for entry in entries]
        problems = []
        for future in futures:
            problem = future.result()
            if progress is not None:
                progress(1)
            if problem is not None:
                problems.append(problem)
    return problems
