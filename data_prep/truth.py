"""``data_prep check-truth``: registration accuracy of a built dataset against truth.json.

For synthetic pairs (``data_prep synth`` writes ``RAW/truth.json``) the true LR->HR
homography is known, so the corner error of docs/formats.md can be measured for every
registered pair: the figure behind the accuracy claims, reproducible by anyone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeatrain.dataformat import MANIFEST_NAME, Manifest, parse_json, sha256_file
from aeatrain.errors import UserError
from data_prep.registration import corner_error


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


def _read(path: Path, what: str) -> dict:
    """A JSON object from ``path``; UserError (one line) when it is missing or not one."""
    if not path.is_file():
        raise UserError(f"{path}: not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not {what} (a JSON {type(value).__name__}, not an object)")
    return value


def _object(value, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{path}: {where} is not a JSON object")
    return value


def _homography(entry: dict, path: Path, name: str) -> np.ndarray:
    """The 3x3 matrix of finite numbers under ``entry["homography"]``, else UserError."""
    try:
        matrix = np.array(entry.get("homography"), dtype=float)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise UserError(f"{path}: pair {name}: 'homography' is not a 3x3 matrix of numbers")
    return matrix


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
    truth_path, records_path = raw / "truth.json", data / "registration.json"
    truth = _read(truth_path, "a truth.json of data_prep synth")
    truth_pairs = _object(truth.get("pairs"), truth_path, "'pairs'")
    records = _read(records_path, "a registration.json of data_prep build")
    manifest_path = data / MANIFEST_NAME
    try:
        manifest = parse_json(manifest_path.read_bytes(), Manifest)
    except OSError as err:
        raise UserError(f"{manifest_path}: unreadable ({err.strerror or err})") from None
    except ValueError as err:
        raise UserError(f"{manifest_path}: not a manifest of data_prep build ({err})") from None
    errors, rejected = {}, []
    for name, pair_truth in sorted(truth_pairs.items()):
        record = _object(records.get(name, {}), records_path, f"pair {name}")
        if record.get("status") != "ok":
            rejected.append(name)
            continue
        size = manifest.pairs.get(name)
        if size is None:
            raise UserError(f"{manifest_path}: has no pair {name}, which {records_path} registered")
        errors[name] = _corner_error(
            truth_path,
            name,
            _homography(_object(pair_truth, truth_path, f"pair {name}"), truth_path, name),
            _homography(record, records_path, name),
            (size.width, size.height),
        )
    if not errors:
        raise UserError(f"{data}: no pair of {truth_path} was registered")
    check_built_from(raw, data, sorted(errors))
    return TruthCheck(errors, rejected)


def check_built_from(raw: Path, data: Path, pairs: list[str]) -> None:
    """Refuse unless each of ``pairs`` was built from the very files in ``raw``: the
    samples record every source file's sha256 (another RAW's truth means nothing)."""
    from aeatrain.data import full_images  # imports torch (seconds): not at data_prep's start

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
