"""``data_prep build``: raw pairs -> registered, split WebDataset shards + manifest.

Reads ``RAW/<name>_<mag>.<ext>`` or the pairs a ``--pairs-file`` lists (docs/formats.md
section 1), writes ``DATA/`` (section 2). Per pair, in worker processes: read both
images, cut the data bar (aeatrain.files.microscope.cut_data_bar: ``--no-bar``, ``--bar-row``, the
vendor's row, the public layout's row 944, a detected bar, or none; each file's cut and
its reason go into registration.json, the manifest and the summary), register
LR onto HR (data_prep/registration.py), warp LR into the HR frame (bicubic, source bit
depth), draw the QC picture, and park the registered pair in a scratch folder. Then, in
pair-name order: the train, test and full shards (data_prep/shards.py), registration.json
and manifest.json. Everything is written into a staging folder beside ``DATA`` that is
renamed at the very end (data_prep/outdir.py): no half dataset under the target name,
and the raw folder is only ever read.

A raw folder that breaks the layout or holds an unreadable image stops the build with
one line naming the file. A pair that cannot be used (partners of different bit depth,
absurd sizes, failed registration) is rejected with its reason and left out; the build
fails only when no pair is usable.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeatrain.data.format import SPLITS, pair_key, sha256_file
from aeatrain.errors import UserError
from aeatrain.files.outputs import DATASET
from aeatrain.protocol.split import PROTOCOL, paper_split
from data_prep.outdir import check_target, staged_output
from data_prep.pairs import RawPair, find_pairs, load_pair_images
from data_prep.pairs_file import read_pairs_file
from data_prep.parallel import parallel_map
from data_prep.qc import write_qc
from data_prep.registration import (
    REGISTRATION_JSON,
    RegistrationConfig,
    register,
    registration_json,
    warp_lr_to_hr,
)
from data_prep.shards import Sample, build_manifest, write_manifest, write_split

log = logging.getLogger(__name__)

_SCRATCH = ".registered"


@dataclass
class PairOutcome:
    """What became of one pair; ``record`` is its registration.json entry."""

    name: str
    record: dict
    width: int = 0
    height: int = 0
    bit_depth: int = 0
    scale: float = 0.0
    sources: dict = field(default_factory=dict)
    pixel_size_nm: dict = field(default_factory=dict)  # {"lr": nm | None, "hr": nm | None}
    bar_rows: dict = field(default_factory=dict)  # {"lr": row | None, "hr": row | None}
    bar_sources: dict = field(default_factory=dict)  # {"lr": why, "hr": why}
    microscope: dict = field(default_factory=dict)  # {"lr": vendor record | None, "hr": ...}

    @property
    def ok(self) -> bool:
        return self.record["status"] == "ok"


@dataclass(frozen=True)
class _PairJob:
    pair: RawPair
    bar_row: int | None
    no_bar: bool
    page: int | None
    config: RegistrationConfig
    staging: Path
    raw: Path


def source_name(path: Path, raw: Path) -> str:
    """A source file as recorded: its path relative to the raw folder, ``/``-separated
    (``session 1/img 0041.tif``; ``../other/x.tif`` for a file read from outside it)."""
    return Path(os.path.relpath(path, raw)).as_posix()


def _rejected(pair: RawPair, reason: str, bit_depth: int, raw: Path) -> dict:
    return {
        "status": "rejected",
        "reason": reason,
        "homography": None,
        "inliers": 0,
        "matches": 0,
        "rmse_px": None,
        "ncc": None,
        "scale": None,
        "rotation_deg": None,
        "coarse": None,
        "lr_file": source_name(pair.lr_path, raw),
        "hr_file": source_name(pair.hr_path, raw),
        "bit_depth": bit_depth,
        "magnification_ratio": pair.scale,
        "pixel_size_nm": pair.pixel_size_nm,
        "bar_rows": None,
        "bar_sources": None,
        "microscope": pair.metadata_record(),
        "qc": None,
    }


def _process_pair(job: _PairJob) -> PairOutcome:
    """Worker: read, check, register, warp, QC; the registered pair goes to scratch."""
    pair = job.pair
    lr, hr, lr_depth, hr_depth, bars = load_pair_images(
        pair, job.bar_row, no_bar=job.no_bar, page=job.page
    )
    bar_rows = {key: cut.row for key, cut in bars.items()}
    bar_sources = {key: cut.source for key, cut in bars.items()}
    cut = {"bar_rows": bar_rows, "bar_sources": bar_sources}
    if lr_depth != hr_depth:
        reason = (
            f"partners of different bit depth: {pair.lr_path.name} is {lr_depth}-bit, "
            f"{pair.hr_path.name} is {hr_depth}-bit"
        )
        record = _rejected(pair, reason, lr_depth, job.raw) | cut
        return PairOutcome(pair.name, record)
    result = register(lr, hr, pair.scale, job.config)
    record = _rejected(pair, "", lr_depth, job.raw) | result.as_record() | cut
    if result.homography is not None:
        warped = warp_lr_to_hr(lr, result.homography, hr.shape)
        qc_file = f"qc/{pair_key(pair.name)}.png"
        write_qc(job.staging / qc_file, pair.name, warped, hr, record)
        record["qc"] = qc_file
        if result.ok:
            scratch = job.staging / _SCRATCH
            np.save(scratch / f"{pair_key(pair.name)}.lr.npy", warped)
            np.save(scratch / f"{pair_key(pair.name)}.hr.npy", hr)
    sources = {
        key: {"file": source_name(path, job.raw), "sha256": sha256_file(path)}
        for key, path in (("lr", pair.lr_path), ("hr", pair.hr_path))
    }
    return PairOutcome(
        pair.name,
        record,
        hr.shape[1],
        hr.shape[0],
        lr_depth,
        pair.scale,
        sources,
        pair.pixel_size_nm,
        bar_rows,
        bar_sources,
        pair.metadata_record(),
    )


def _sample_meta(outcome: PairOutcome, region_id: str, region, split_name: str) -> dict:
    record = outcome.record
    return {
        "pair": outcome.name,
        "region_id": region_id,
        "split": split_name,
        "region": region.as_dict(),
        "image_size": {"width": outcome.width, "height": outcome.height},
        "bit_depth": outcome.bit_depth,
        "scale": float(outcome.scale),
        "registration": {k: record[k] for k in ("homography", "inliers", "rmse_px", "ncc")},
        "sources": outcome.sources,
        "pixel_size_nm": outcome.pixel_size_nm,
        "microscope": outcome.microscope,
    }


def _samples(outcomes: list[PairOutcome], split_name: str, staging: Path):
    """The samples of one split, pair by pair in name order, read back from scratch."""
    for outcome in outcomes:
        scratch = staging / _SCRATCH
        lr = np.load(scratch / f"{pair_key(outcome.name)}.lr.npy", mmap_mode="r")
        hr = np.load(scratch / f"{pair_key(outcome.name)}.hr.npy", mmap_mode="r")
        regions = paper_split(outcome.width, outcome.height)
        if split_name == "train":
            chosen = {"train": regions.train}
        elif split_name == "test":
            chosen = regions.tests
        else:
            chosen = {"full": regions.full}
        for region_id, r in chosen.items():
            meta = _sample_meta(outcome, region_id, r, split_name)
            if split_name == "full":
                meta["test_regions"] = {k: t.as_dict() for k, t in regions.tests.items()}
                meta["train_region"] = regions.train.as_dict()
            yield Sample(
                outcome.name,
                region_id,
                np.ascontiguousarray(lr[r.y0 : r.y1, r.x0 : r.x1]),
                np.ascontiguousarray(hr[r.y0 : r.y1, r.x0 : r.x1]),
                meta,
            )


def _no_usable_pair(raw: Path, outcomes: list[PairOutcome]) -> UserError:
    reasons = "; ".join(f"{o.name}: {o.record['reason']}" for o in outcomes[:3])
    more = f"; and {len(outcomes) - 3} more" if len(outcomes) > 3 else ""
    return UserError(f"{raw}: no usable pair, all {len(outcomes)} rejected ({reasons}{more})")


def _pixel_size_from(microscope: dict) -> dict:
    """``{"lr": field, "hr": field}``: where each file's pixel size came from (None: none)."""
    return {key: (record or {}).get("pixel_size_from") for key, record in microscope.items()}


def _write_dataset(
    staging: Path, outcomes: list[PairOutcome], bar_row, no_bar: bool, command: str
) -> dict:
    usable = [o for o in outcomes if o.ok]
    shards = {s: write_split(staging, s, _samples(usable, s, staging)) for s in SPLITS}
    manifest = build_manifest(
        shards=shards,
        pairs={
            o.name: {
                "width": o.width,
                "height": o.height,
                "bit_depth": o.bit_depth,
                "train_region": paper_split(o.width, o.height).train.as_dict(),
                "pixel_size_nm": o.pixel_size_nm,
                "bar_rows": o.bar_rows,
                "bar_sources": o.bar_sources,
                "pixel_size_from": _pixel_size_from(o.microscope),
            }
            for o in usable
        },
        rejected={o.name: o.record["reason"] for o in outcomes if not o.ok},
        protocol=PROTOCOL,
        scale=usable[0].scale,
        bar_row=bar_row,
        bar_from_metadata=not no_bar and bar_row is None,
        command=command,
    )
    write_manifest(staging, manifest)
    return manifest


def _check_sources_outside(pairs: list[RawPair], out: Path) -> None:
    """Refuse a source image inside the output folder: replacing it would delete it."""
    target = out.resolve()
    for pair in pairs:
        for path in (pair.lr_path, pair.hr_path):
            if path.resolve().is_relative_to(target):
                raise UserError(
                    f"{path}: image of pair {pair.name!r} lies inside the output folder "
                    f"{out}, which build replaces; move it out or choose another --out"
                )


def build_dataset(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    bar_row: int | None = None,
    no_bar: bool = False,
    pairs_file: str | os.PathLike | None = None,
    outside_raw: bool = False,
    page: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    config: RegistrationConfig | None = None,
    command: str = "data_prep.build.build_dataset",
) -> list[PairOutcome]:
    """Build ``out`` from the pairs in ``raw``; returns every pair's outcome, name order.

    Pairs: by name, or as ``pairs_file`` lists them. The data bar: none with
    ``no_bar``, else at ``bar_row`` in every file, else (None) each file's as
    aeatrain.files.microscope.cut_data_bar finds it. ``page``: the page of multi-page TIFFs
    (refused without it). ``outside_raw``: the pairs file may list files outside
    ``raw``. Raises UserError (nothing written, nothing deleted) for a bad raw folder,
    pairs file or output folder, a source image inside ``out``, an unreadable image, or
    when no pair is usable.
    """
    raw, out = Path(raw), Path(out)
    if pairs_file is None:
        pairs = find_pairs(raw)
    else:
        pairs = read_pairs_file(pairs_file, raw, outside_raw=outside_raw)
    sources = (raw,) if pairs_file is None else (raw, Path(pairs_file))
    check_target(out, DATASET, overwrite=overwrite, protect=sources)
    _check_sources_outside(pairs, out)
    config = config or RegistrationConfig()
    with staged_output(out, DATASET, overwrite=overwrite) as staging:
        (staging / "qc").mkdir()
        (staging / _SCRATCH).mkdir()
        jobs = [_PairJob(p, bar_row, no_bar, page, config, staging, raw) for p in pairs]
        outcomes = parallel_map(_process_pair, jobs, workers=workers, desc="build")
        for o in outcomes:
            if not o.ok:
                log.warning("%s: rejected: %s", o.name, o.record["reason"])
        if not any(o.ok for o in outcomes):
            raise _no_usable_pair(raw, outcomes)
        text = registration_json({o.name: o.record for o in outcomes})
        (staging / REGISTRATION_JSON).write_text(text, encoding="utf-8")
        _write_dataset(staging, outcomes, bar_row, no_bar, command)
        shutil.rmtree(staging / _SCRATCH)
    return outcomes
