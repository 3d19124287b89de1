"""Which folders and files ``--overwrite`` may replace: only those aeatrain wrote.

``--overwrite`` never deletes a user's files. A folder is replaced only when it holds the
marker of the kind of output about to replace it (a dataset's ``manifest.json``, a
synthetic raw folder's ``truth.json``, ...: a JSON file with a known value under a known
key); a file is replaced only when it is listed in its folder's ``aeatrain-outputs.json``
ledger, which every command writing loose files into a shared folder (predict, refmaps)
keeps up to date; a file that carries its own mark (a bioimage.io package that
``python -m aeatrain.export`` wrote: a zip whose ``rdf.yaml`` has ``config.aeatrain``) is
replaced only when it has that mark. Anything else, a package from the BioImage Model Zoo
included, is refused with one line naming it.

    check_replaceable_folder(out, DATASET, overwrite=args.overwrite)   # whole folders
    check_replaceable_file(target, overwrite=args.overwrite)           # loose files
    check_replaceable_file(out, overwrite=True, kind=AEATRAIN_PACKAGE) # self-marked files
    record_outputs(folder, [target.name], tool="aeatrain.predict")    # before writing
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aeatrain.errors import UserError
from aeatrain.files.atomic import atomic_write_text
from aeatrain.files.yamlfile import load_yaml

LEDGER_NAME = "aeatrain-outputs.json"
LEDGER_FORMAT = "aeatrain-outputs"


@dataclass(frozen=True)
class Marker:
    """A folder is of this kind when ``file`` is a JSON object with ``key: value``."""

    file: str
    key: str
    value: str
    what: str  # for messages: "a dataset (data_prep build)"


DATASET = Marker("manifest.json", "format", "aeatrain-dataset", "a dataset of data_prep build")
SYNTH_RAW = Marker("truth.json", "generator", "aeatrain.synth", "a raw folder of data_prep synth")
METRICS = Marker("metrics.json", "format", "aeatrain-metrics", "an aeatrain.evaluate report")
OUTPUTS = Marker(LEDGER_NAME, "format", LEDGER_FORMAT, "a folder of predict/refmaps outputs")


@dataclass(frozen=True)
class ArchiveKind:
    """A file is of this kind when it is a zip archive holding one of ``members``, a YAML
    mapping whose ``config`` section has the key ``config_key`` (the writer's mark)."""

    members: tuple[str, ...]
    config_key: str
    what: str  # for messages: "a bioimage.io package written by ..."


AEATRAIN_PACKAGE = ArchiveKind(
    ("rdf.yaml", "bioimageio.yaml"),
    "aeatrain",
    "a bioimage.io package written by aeatrain.export (an rdf.yaml with config.aeatrain)",
)


def is_archive_of(path: str | os.PathLike, kind: ArchiveKind) -> bool:
    """True when ``path`` is a readable zip whose first member of ``kind.members`` is a
    YAML mapping with ``config: {kind.config_key: ...}``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in kind.members if name in archive.namelist()]
            if not names:
                return False
            document = load_yaml(archive.read(names[0]), f"{path}: {names[0]}")
    except (OSError, zipfile.BadZipFile, UserError):  # not ours, whatever else it is
        return False
    config = document.get("config") if isinstance(document, dict) else None
    return isinstance(config, dict) and isinstance(config.get(kind.config_key), dict)


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def holds_marker(folder: str | os.PathLike, marker: Marker) -> bool:
    """True when ``folder`` holds ``marker``: the folder is aeatrain output of that kind."""
    content = _json_object(Path(folder) / marker.file)
    return content is not None and content.get(marker.key) == marker.value


def check_replaceable_folder(folder: str | os.PathLike, marker: Marker, *, overwrite: bool) -> None:
    """Refuse (UserError, one line) to replace a non-empty ``folder`` unless ``overwrite``
    is given AND the folder holds ``marker``. A missing or empty folder is always fine."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{folder}: folder is not empty (use --overwrite to replace it)")
    if not holds_marker(folder, marker):
        raise UserError(
            f"{folder}: --overwrite replaces only {marker.what} (a folder with its "
            f"{marker.file}); this folder is not one, so nothing was deleted"
        )


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` (absolute) if it exists, else the nearest folder above it that does."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written: the nearest
    existing folder at or above it is not a folder, lies on a read-only file system or
    may not be written by this user. ``option`` names it for the user (``--out``)."""
    path = Path(path)
    folder = nearest_existing(path)
    if not folder.is_dir():
        raise UserError(f"{path}: {option} cannot be created, {folder} is not a folder")
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        raise UserError(
            f"{path}: {option} cannot be written: {folder} is on a read-only file system"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"{path}: {option} cannot be written: {folder} is not writable (permission)"
        )


def recorded_outputs(folder: str | os.PathLike) -> set[str]:
    """Names of the files aeatrain wrote into ``folder`` (its ledger; empty without one)."""
    ledger = _json_object(Path(folder) / LEDGER_NAME)
    if ledger is None or ledger.get("format") != LEDGER_FORMAT:
        return set()
    return set(ledger.get("files", {}))


def check_replaceable_file(
    target: str | os.PathLike,
    *,
    overwrite: bool,
    marker: Marker | None = None,
    kind: ArchiveKind | None = None,
) -> None:
    """Refuse an existing ``target`` unless ``overwrite`` and aeatrain wrote it: it is
    of ``kind`` (a self-marked file: only that counts), or it is listed in its folder's
    ledger, or the folder holds ``marker`` (its own kind)."""
    target = Path(target)
    if not target.exists():
        return
    if not overwrite:
        raise UserError(f"{target}: already exists (use --overwrite to replace it)")
    if kind is not None:
        if not is_archive_of(target, kind):
            raise UserError(
                f"{target}: exists and is not {kind.what}; refusing to replace it even "
                "with --overwrite"
            )
        return
    if marker is not None and holds_marker(target.parent, marker):
        return
    if target.name not in recorded_outputs(target.parent):
        raise UserError(
            f"{target}: not written by aeatrain (not listed in {target.parent / LEDGER_NAME}); "
            "--overwrite replaces only aeatrain's own outputs"
        )


def record_outputs(folder: str | os.PathLike, names: Iterable[str], *, tool: str) -> None:
    """Add ``names`` to ``folder``'s ledger (atomically), before the files are written."""
    path = Path(folder) / LEDGER_NAME
    ledger = _json_object(path) if path.exists() else {"format": LEDGER_FORMAT, "files": {}}
    if ledger is None or ledger.get("format") != LEDGER_FORMAT:
        raise UserError(f"{path}: exists but is not an aeatrain ledger; not replacing it")
    ledger["files"].update({name: tool for name in names})
    text = json.dumps(ledger, indent=1, sort_keys=True) + "\n"
    atomic_write_text(path, text, overwrite=True)
