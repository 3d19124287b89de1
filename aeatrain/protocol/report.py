"""The evaluation's report: the table of the paper's Table 1 layout (metrics.md) and every
row, pair and tile (metrics.json, aeatrain.protocol.metrics' format)."""

from __future__ import annotations

import math
import time

from aeatrain import __version__
from aeatrain.protocol.evaluation import RowResult
from aeatrain.protocol.metrics import mean_scores, metrics_json_text

PAPER_TABLE_1 = (
    "Paper (Xie et al., IEEE TMI 2022, Table 1; real SEM data, pooled training, whole "
    "images): dPSNR / dSSIM: U-Net 1.46 dB / 0.074, GVTNet 1.87 dB / 0.086, AEANet "
    "2.10 dB / 0.087; AEANet foreground dPSNR 1.15 dB, background dPSNR 2.42 dB."
)
COLUMNS = (
    "run",
    "weights",
    "prediction",
    "pairs",
    "PSNR (dB)",
    "SSIM",
    "dPSNR (dB)",
    "dSSIM",
    "fg dPSNR (dB)",
    "bg dPSNR (dB)",
)


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table_rows(results: list[RowResult]) -> list[list[str]]:
    """Reference line(s) first (one per distinct pair set), then one line per result."""
    lines, seen_sets = [], set()
    for result in results:
        pairs = tuple(result.pairs)
        if pairs in seen_sets:
            continue
        seen_sets.add(pairs)
        s = result.summary
        label = (
            "input (bicubic LR)"
            if len(seen_sets) == 1
            else f"input (bicubic LR), {len(pairs)} pairs"
        )
        lines.append(
            [
                label,
                "-",
                "-",
                str(len(pairs)),
                _fmt(s["input_psnr"], 2),
                _fmt(s["input_ssim"], 4),
                "-",
                "-",
                "-",
                "-",
            ]
        )
    for result in results:
        s = result.summary
        weights = ",".join(sorted({r.weights for r in result.runs}))
        lines.append(
            [
                result.spec.label,
                weights,
                result.tiling.label,
                str(len(result.pairs)),
                _fmt(s["psnr"], 2),
                _fmt(s["ssim"], 4),
                _fmt(s["dpsnr"], 3),
                _fmt(s["dssim"], 4),
                _fmt(s["fg_dpsnr"], 3),
                _fmt(s["bg_dpsnr"], 3),
            ]
        )
    return lines


def markdown_table(results: list[RowResult]) -> str:
    rows = [list(COLUMNS), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def markdown_report(
    results: list[RowResult], *, data: str, device: str, seconds: float, command: str
) -> str:
    """metrics.md: the table, how it was made and what its figures mean."""
    return "\n".join(
        [
            "# Evaluation",
            "",
            f"Data: `{data}`. Device: {device}. {seconds:.1f} s. aeatrain {__version__}.",
            f"Command: `{command}`",
            "",
            markdown_table(results),
            "",
            "PSNR: cv2.PSNR on the image's own scale (R = 255, or 65535 for 16-bit data), the "
            "prediction clipped, not rounded. SSIM: scikit-image, 7x7 window. dX = X(prediction) "
            "- X(input), the input being the registered bicubic LR. fg/bg: Otsu threshold on each "
            "HR test tile, foreground = brighter than it. Averages: over the test tiles of a "
            "pair, then over pairs. Per-pair and per-tile figures: metrics.json.",
            "",
            PAPER_TABLE_1,
            "",
        ]
    )


def result_json(result: RowResult) -> dict:
    """One row of metrics.json: its runs, prediction, summary, pairs and tiles."""
    pairs = {}
    for run in result.runs:
        for pair, tiles in run.tiles.items():
            pairs[pair] = {
                "run": str(run.path),
                "mean": mean_scores(tiles),
                "tiles": {tile: scores.as_dict() for tile, scores in tiles.items()},
            }
    return {
        "label": result.spec.label,
        "kind": "selftrain" if result.spec.selftrain else "run",
        "runs": [
            {
                "path": str(r.path),
                "model": r.model_name,
                "step": r.step,
                "weights": r.weights,
                "pairs": sorted(r.tiles),
                "config": r.config,  # compare groups rows by what was run
                "trained_on": r.trained_on,
            }
            for r in result.runs
        ],
        "prediction": result.tiling.as_dict(),
        "summary": result.summary,
        "pairs": pairs,
    }


def metrics_json(
    results: list[RowResult], *, data: str, manifest_sha256: str, device: str, command: str
) -> str:
    """metrics.json (aeatrain.protocol.metrics.MetricsFile): every row, pair and tile."""
    document = {
        "format": "aeatrain-metrics",
        "format_version": 1,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "data": {"path": data, "manifest_sha256": manifest_sha256},
        "device": device,
        "protocol": {
            "psnr": "cv2.PSNR, R = 2^bits - 1, prediction * R clipped to [0, R], not rounded",
            "ssim": "skimage structural_similarity, data_range = 2^bits - 1, 7x7 window",
            "masks": "Otsu threshold on the HR tile; foreground = HR > threshold",
            "aggregation": "mean over a pair's test tiles, then over pairs",
        },
        "rows": [result_json(r) for r in results],
    }
    return metrics_json_text(document)
