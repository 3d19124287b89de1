"""``data_prep check-truth``: registration accuracy of a built dataset against truth.json.

For synthetic pairs (``data_prep synth`` writes ``RAW/truth.json``) the true LR->HR
homography is known, so the corner error of docs/formats.md can be measured for every
registered pair: the figure behind the accuracy claims, reproducible by anyone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeatrain.data.format import MANIFEST_NAME, read_manifest, sha256_file
from aeatrain.errors import UserError
from data_prep.registration import REGISTRATION_JSON, corner_error, read_registration
from data_prep.synth.generate import TRUTH_JSON, read_truth


@dataclass(frozen=True)
class TruthCheck:
    errors_px: dict[str, float]  # pair -> corner error, HR px (registered pairs only)
    rejected: list[str]  # pairs in truth.json that the build rejected or lacks

    @property
    def max_px(self) -> float:
        return max(self.errors_px.values())

    @property
    def median_px(self) -> float:
        return float(np.median(list(self.errors_px.values())))


def _corner_error(truth_path: Path, name: str, true, estimated, size) -> float:
    try:
        error = corner_error(true, estimated, size)
    except np.linalg.LinAlgError:
        error = math.nan
    if not math.isfinite(error):
        raise UserError(f"{truth_path}: pair {name}: the true homography is not invertible")
    return error


def check_truth(raw: str | Path, data: str | Path) -> TruthCheck:
    """Corner error of every registered pair of ``data`` against ``raw/truth.json``; a
    file that is not what synth and build write raises UserError naming it."""
    raw, data = Path(raw), Path(data)
    truth_path = raw / TRUTH_JSON
    truth = read_truth(raw)
    records = read_registration(data)
    manifest = read_manifest(data / MANIFEST_NAME)
    errors, rejected = {}, []
    for name, pair_truth in sorted(truth.pairs.items()):
        record = records.get(name)
        if record is None or record.status != "ok":
            rejected.append(name)
            continue
        size = manifest.pairs.get(name)
        if size is None:
            raise UserError(
                f"{data / MANIFEST_NAME}: has no pair {name}, which "
                f"{data / REGISTRATION_JSON} registered"
            )
        if record.homography is None:
            raise UserError(f"{data / REGISTRATION_JSON}: pair {name} is ok but has no homography")
        errors[name] = _corner_error(
            truth_path,
            name,
            np.array(pair_truth.homography),
            np.array(record.homography),
            (size.width, size.height),
        )
    if not errors:
        raise UserError(f"{data}: no pair of {truth_path} was registered")
    check_built_from(raw, data, sorted(errors))
    return TruthCheck(errors, rejected)


def check_built_from(raw: Path, data: Path, pairs: list[str]) -> None:
    """Refuse unless each of ``pairs`` was built from the very files in ``raw``: the
    samples record every source file's sha256 (another RAW's truth means nothing)."""
    # imports torch (seconds): not at data_prep's start
    from aeatrain.data.streams import full_images

    for image in full_images(data, pairs=pairs):
        for source in image.meta["sources"].values():
            path = raw / source["file"]
            why = "missing" if not path.is_file() else "sha256 differs"
            if why == "missing" or sha256_file(path) != source["sha256"]:
                raise UserError(
                    f"{data}: pair {image.pair} was built from another {source['file']} than "
                    f"{path} ({why}); check-truth needs the RAW that DATA was built from"
                )


def truth_table(check: TruthCheck) -> str:
    lines = [f"{name:<20} corner error {err:.4f} HR px" for name, err in check.errors_px.items()]
    lines += [f"{name:<20} not registered" for name in check.rejected]
    lines.append(
        f"corner error over {len(check.errors_px)} pairs: max {check.max_px:.4f} px, "
        f"median {check.median_px:.4f} px"
    )
    return "\n".join(lines)
