"""Pictures and tables for a human to judge a registration and a dataset.

``qc/<key>.png`` per pair (``aeatrain.data.format.pair_key``): on the left the whole
registered pair as a colour overlay (HR in green, warped LR in magenta: aligned
structure turns grey/white, a shift shows as coloured fringes), on the right a
full-resolution centre crop as a checkerboard of warped LR and HR squares (edges must
run straight across the squares), and above them the registration figures. ``summary`` turns a built dataset into a short text table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from aeatrain.data.format import MANIFEST_NAME, BarRows, Manifest, read_manifest
from data_prep.registration import RegistrationRecord, flatten_background, read_registration

_CHECKER_PX = 32
_BACKGROUND_PX = 40.0  # sigma of the brightness variation removed for display


def _display(image: np.ndarray) -> np.ndarray:
    """uint8 view stretched between the 0.5 and 99.5 percentiles."""
    image = image.astype(np.float32)
    low, high = np.percentile(image, (0.5, 99.5))
    return np.clip((image - low) * (255 / max(float(high - low), 1e-6)), 0, 255).astype(np.uint8)


def _even_out(image: np.ndarray) -> np.ndarray:
    """Local mean removed and local standard deviation divided out (over ~40 px)."""
    flat = flatten_background(image.astype(np.float32), _BACKGROUND_PX)
    local_power = flat * flat - flatten_background(flat * flat, _BACKGROUND_PX)  # its blur
    return flat / np.sqrt(np.maximum(local_power, 1e-12))


def _overlay(lr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR: HR in green, LR in magenta."""
    return np.dstack([lr, hr, lr])


def _checkerboard(lr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(lr.shape)
    use_lr = ((rows // _CHECKER_PX + cols // _CHECKER_PX) % 2).astype(bool)
    board = np.where(use_lr, lr, hr)
    return cv2.cvtColor(board, cv2.COLOR_GRAY2BGR)


def _wrap(text: str, width: int, font, size: float) -> list[str]:
    """Split ``text`` into lines that fit ``width`` pixels."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and cv2.getTextSize(candidate, font, size, 1)[0][0] > width - 16:
            lines.append(line)
            candidate = word
        line = candidate
    return [*lines, line]


def _header(width: int, name: str, record: dict) -> np.ndarray:
    """Rows of text above the pictures: status (and reason), figures, legend."""
    ok = record["status"] == "ok"
    first = f"{name}: {record['status'].upper()}"
    if not ok:
        first += f" - {record['reason']}"
    figures = (
        f"inliers {record['inliers']}/{record['matches']}  rmse {_fmt(record['rmse_px'])} px  "
        f"ncc {_fmt(record['ncc'])}  scale {_fmt(record['scale'], 4)}  "
        f"rotation {_fmt(record['rotation_deg'], 3)} deg"
    )
    legend = (
        f"left: HR green, warped LR magenta (whole image, half size); right: {_CHECKER_PX} px "
        "checkerboard of warped LR and HR (centre, full size)"
    )
    font, size, step = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 22
    colour = (80, 220, 80) if ok else (60, 60, 255)
    lines = [(t, colour) for t in _wrap(first, width, font, size)]
    lines += [(t, (230, 230, 230)) for t in _wrap(figures, width, font, size)]
    lines += [(t, (170, 170, 170)) for t in _wrap(legend, width, font, size)]
    header = np.zeros((step * len(lines) + 8, width, 3), np.uint8)
    for row, (text, bgr) in enumerate(lines, start=1):
        cv2.putText(header, text, (8, step * row), font, size, bgr, 1, cv2.LINE_AA)
    return header


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def qc_picture(name: str, lr_warped: np.ndarray, hr: np.ndarray, record: dict) -> np.ndarray:
    """(rows, cols, 3) BGR uint8 picture of one registered pair and its figures.

    Both images are shown with local brightness and contrast evened out, so that
    charging or a gain difference between the scans does not tint the overlay.
    """
    lr8, hr8 = _display(_even_out(lr_warped)), _display(_even_out(hr))
    height, width = hr8.shape
    half = (max(1, width // 2), max(1, height // 2))
    overview = cv2.resize(_overlay(lr8, hr8), half, interpolation=cv2.INTER_AREA)
    y0, x0 = (height - half[1]) // 2, (width - half[0]) // 2
    crop = _checkerboard(
        lr8[y0 : y0 + half[1], x0 : x0 + half[0]], hr8[y0 : y0 + half[1], x0 : x0 + half[0]]
    )
    gap = np.full((half[1], 8, 3), 40, np.uint8)
    body = np.hstack([overview, gap, crop])
    return np.vstack([_header(body.shape[1], name, record), body])


def write_qc(path: Path, name: str, lr_warped: np.ndarray, hr: np.ndarray, record: dict) -> None:
    ok, data = cv2.imencode(".png", qc_picture(name, lr_warped, hr, record))
    if not ok:
        raise ValueError("PNG encoding of the QC picture failed")
    path.write_bytes(data.tobytes())  # inside the build's staging folder: atomic already


# --- dataset summary ---------------------------------------------------------------------


def pair_table(records: Mapping[str, RegistrationRecord]) -> str:
    """One line per pair: status, registration figures, reason."""
    lines = [
        f"{'pair':<20} {'status':<8} {'inliers':>11} {'rmse_px':>8} {'ncc':>6} "
        f"{'scale':>7} {'rot_deg':>8}  reason"
    ]
    for name, r in sorted(records.items()):
        lines.append(
            f"{name:<20} {r.status:<8} {f'{r.inliers}/{r.matches}':>11} {_fmt(r.rmse_px):>8} "
            f"{_fmt(r.ncc):>6} {_fmt(r.scale, 4):>7} "
            f"{_fmt(r.rotation_deg, 3):>8}  {r.reason or ''}"
        )
    return "\n".join(lines)


def _bar_rows_text(manifest: Manifest) -> str:
    """Where the data bars were cut and why: each distinct row of the pairs' files (the
    vendor's rows can differ per file) with its reason, or the manifest's ``bar_row`` for
    datasets built before the rows and reasons were kept."""
    pairs = manifest.pairs.values()
    if all(pair.bar_rows is None for pair in pairs):
        return f"cut at row {manifest.bar_row}" if manifest.bar_row is not None else "none"
    cuts = set()
    for pair in pairs:
        sources = pair.bar_sources or {}
        for key, row in (pair.bar_rows or BarRows()).model_dump().items():
            cuts.add((-1 if row is None else row, sources.get(key)))
    texts = []
    for row, source in sorted(cuts, key=lambda cut: (cut[0], cut[1] or "")):
        text = "images kept whole" if row < 0 else f"cut at row {row}"
        reason = "no bar found" if source == "none" else source
        texts.append(f"{text} ({reason})" if reason else text)
    return ", ".join(texts)


def _pixel_sizes_text(records: Mapping[str, RegistrationRecord]) -> str:
    """The pixel sizes the files recorded, LR and HR, by the field they came from (range
    and file count): an old dataset (no field recorded) says so, so that a Zeiss size
    read the old way shows."""
    parts = []
    for key, label in (("lr", "LR"), ("hr", "HR")):
        by_source: dict[str, list[float]] = {}
        for record in records.values():
            nm = getattr(record.pixel_size_nm, key, None)
            micro = getattr(record.microscope, key, None)
            if nm is None:
                by_source.setdefault("none recorded", [])
                continue
            vendor = micro.vendor if micro is not None else "?"
            source = getattr(micro, "pixel_size_from", None) or (
                f"{vendor}, field not recorded: an older build, which read "
                "Zeiss files not 1024 wide wrong by width/1024 (AP_PIXEL_SIZE)"
            )
            by_source.setdefault(source, []).append(nm)
        texts = []
        for source, sizes in sorted(by_source.items()):
            if not sizes:
                texts.append(source)
                continue
            low, high = min(sizes), max(sizes)
            span = f"{low:.4g} nm" if low == high else f"{low:.4g}-{high:.4g} nm"
            texts.append(f"{span} ({source}, {len(sizes)} files)")
        parts.append(f"{label} {', '.join(texts)}")
    return "; ".join(parts)


def summary_text(data_dir: str | Path) -> str:
    """Short summary of a built dataset: pairs ok/rejected, figures, samples per split."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir / MANIFEST_NAME)
    records = read_registration(data_dir)
    ok = [r for r in records.values() if r.status == "ok"]
    lines = [
        f"dataset {data_dir}: protocol {manifest.protocol.name}, scale "
        f"{manifest.scale:g}, bit depth {', '.join(map(str, manifest.bit_depths))}, "
        f"data bar: {_bar_rows_text(manifest)}",
        f"pixel sizes: {_pixel_sizes_text(records)}",
        f"pairs: {len(ok)} ok, {len(records) - len(ok)} rejected",
        pair_table(records),
    ]
    ncc = [r.ncc for r in ok if r.ncc is not None]
    if ncc:
        rmse = [r.rmse_px for r in ok if r.rmse_px is not None]
        figures = f"registration: ncc min {min(ncc):.3f} median {np.median(ncc):.3f}"
        if rmse:
            figures += f"; feature rmse_px median {np.median(rmse):.2f} max {max(rmse):.2f}"
        lines.append(figures)
    splits = manifest.splits
    order = [s for s in ("train", "test", "full") if s in splits]
    lines.append(
        "samples: "
        + ", ".join(f"{s} {splits[s].samples} in {len(splits[s].shards)} shard(s)" for s in order)
    )
    return "\n".join(lines)
