"""Score trained runs with the paper's protocol: ``python -m aeatrain.evaluate``.

    python -m aeatrain.evaluate --run RUN [--run RUN2 ...] --data DATA
        [--selftrain RUN_A RUN_B ... | --selftrain 'runs/self_*']
        [--tile S [--margin 32] | --tiles 512,384,256,128] [--tta none|d4]
        [--pairs NAME ...] [--weights auto|ema|raw] [--out DIR] [--device cpu|cuda]

Each registered LR image of DATA's ``full`` split is predicted whole (reflect-padded to a
multiple of 16 and cropped back) or, with ``--tile``/``--tiles``, with the paper's tiles
(tile S, margin 32: aeatrain.protocol.inference.predict_paper_tiles), and with ``--tta d4`` as the
mean of its 8 flips/rotations (aeatrain.protocol.inference.self_ensemble). The three test tiles of each
image are scored (aeatrain.protocol.metrics: cv2.PSNR and SSIM on the 0..255 scale, the prediction
clipped; gains over the input; Otsu foreground/background on the HR tile), averaged over
tiles, then over pairs.

Rows of the table are runs, columns as the paper's Table 1. A run trained on one pair
(``config.yaml`` ``data.pairs: [name]``) is a self-training run and is scored on its own
pair; ``--selftrain`` gathers several of them into ONE row (one model per pair, averaged
over pairs, as the paper's self-training column). A pooled run is scored on the pairs it
trained on (all pairs when ``data.pairs`` is null), or on ``--pairs``. The input (the
registered bicubic LR) is printed as a reference line.

Writes ``metrics.md`` (the table) and ``metrics.json`` (per pair and per tile figures) to
``--out`` (default: ``eval/`` in the first run folder); both are replaced when re-run,
but never files of that name that aeatrain did not write (refused before any scoring).

At scale, the same command under ``accelerate launch --num_processes N -m
aeatrain.evaluate --run ...`` or ``torchrun --nproc_per_node N -m aeatrain.evaluate --
--run ...`` (torchrun needs the ``--``: it reads ``--run`` as an abbreviation of its own
``--run-path``): the images are split
over the processes (image i to process i % N, each on its own GPU when there are GPUs),
streamed one at a time from the shards (local, http(s) or ``pipe:``), and the scores
gathered into the one table a single process would write (the first process writes it).

The scoring is aeatrain.protocol.scoring's; training's validation (aeatrain/train.py)
scores through the same functions (``score_pairs`` -> ``score_share``, ``merge_shares``,
``summarize_pairs``), so a run's last logged val/dpsnr and val/dssim are this
command's figures for its final weights.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aeatrain import __version__
from aeatrain.errors import UserError, run_cli
from aeatrain.files.atomic import atomic_write_text
from aeatrain.files.outputs import METRICS, check_replaceable_file
from aeatrain.malloc import keep_freed_memory
from aeatrain.protocol.inference import TTA_MODES, check_paper_tiling, choose_device
from aeatrain.protocol.metrics import TileScores, mean_scores, metrics_json_text
from aeatrain.protocol.scoring import (
    PAPER_MARGIN,
    Tiling,
    merge_shares,
    score_share,
    summarize_pairs,
)
from aeatrain.run.final import finite_output
from aeatrain.run.options import add_loading_arguments

log = logging.getLogger(__name__)

REPORT_FILES = ("metrics.md", "metrics.json")


@dataclass
class RowSpec:
    """One row: a run, or a group of self-training runs (``selftrain``)."""

    label: str
    runs: list[Path]
    selftrain: bool = False


@dataclass
class RunScores:
    """What one run scored on its pairs: per pair, per tile."""

    path: Path
    model_name: str
    step: int
    weights: str
    tiles: dict[str, dict[str, TileScores]] = field(default_factory=dict)  # pair -> tile -> s
    config: dict = field(default_factory=dict)  # the run's config.yaml: what was trained
    trained_on: str | None = None  # identity of the dataset the run trained on (run.json)


@dataclass
class RowResult:
    """One line of the table: a row's runs scored with one tiling."""

    spec: RowSpec
    tiling: Tiling
    runs: list[RunScores]

    @property
    def tiles(self) -> dict[str, dict[str, TileScores]]:
        """Pair -> tile id -> scores over the row's runs (a pair belongs to one run)."""
        return {pair: tiles for run in self.runs for pair, tiles in run.tiles.items()}

    @property
    def pairs(self) -> list[str]:
        return sorted(self.tiles)

    @property
    def summary(self) -> dict[str, float]:
        return summarize_pairs(self.tiles)


# ----------------------------------------------------------------------------- arguments


def expand_runs(patterns: list[str]) -> list[Path]:
    """Run folders from paths or glob patterns (quoted, so SLURM scripts can pass one)."""
    runs: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
            if not found:
                raise UserError(f"--selftrain {pattern}: matches no run folder")
            runs.extend(found)
        else:
            runs.append(Path(pattern))
    return runs


def parse_tiles(text: str) -> list[Tiling]:
    """``"512,384,whole"`` -> tilings; "whole" (or "full", 0) means the whole image."""
    tilings = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in ("whole", "full", "0"):
            tilings.append(Tiling())
        elif item.isdigit() and int(item) > 2 * PAPER_MARGIN:
            tilings.append(Tiling(int(item)))
        else:
            raise UserError(f"--tiles {text}: {item!r} is not a tile size above 64 px or 'whole'")
    return tilings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--run", action="append", default=[], help="a run folder (repeat: one row each)"
    )
    parser.add_argument(
        "--selftrain",
        action="append",
        nargs="+",
        default=[],
        metavar="RUN",
        help="self-training runs (folders or a quoted glob) scored as ONE row; repeatable",
    )
    parser.add_argument("--data", required=True, help="DATA folder (manifest.json + shards)")
    parser.add_argument(
        "--cache-dir",
        help="node-local folder to stage each shard of a remote --data into once (needed "
        "when its server ignores range requests); as training's data.cache_dir",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tile", type=int, help="predict in the paper's tiles of this size")
    group.add_argument("--tiles", help="patch-size sweep, e.g. 512,384,256,128 (add 'whole')")
    parser.add_argument(
        "--margin", type=int, default=PAPER_MARGIN, help="context margin of --tile(s), default 32"
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="d4: average the predictions of the image's 8 flips/rotations (8x the time)",
    )
    parser.add_argument("--pairs", nargs="+", help="score only these pairs")
    add_loading_arguments(parser)
    parser.add_argument(
        "--out", help="folder for metrics.md/json (default: eval/ in the first run)"
    )
    args = parser.parse_args(argv)
    if not args.run and not args.selftrain:
        raise UserError("give at least one --run or --selftrain")
    return args


def tilings_of(args: argparse.Namespace) -> list[Tiling]:
    """The tilings asked for, each tile checked against the margin before any work."""
    if args.tiles:
        tiles = [t.tile for t in parse_tiles(args.tiles)]
    else:
        tiles = [args.tile or None]
    tilings = [
        Tiling(tile, args.margin, args.tta) if tile else Tiling(tta=args.tta) for tile in tiles
    ]
    if args.margin < 0:
        raise UserError(f"--margin {args.margin}: must be 0 or more")
    for tiling in tilings:
        if tiling.tile is not None:
            check_paper_tiling(tiling.tile, tiling.margin)
    return tilings


def row_specs(args: argparse.Namespace) -> list[RowSpec]:
    specs = [RowSpec(Path(run).name, [Path(run)]) for run in args.run]
    for patterns in args.selftrain:
        runs = expand_runs(patterns)
        if len(set(runs)) != len(runs):
            raise UserError(f"--selftrain {' '.join(patterns)}: names a run twice")
        label = (
            f"self-training ({len(runs)} runs: {runs[0].name}, ...)"
            if len(runs) > 1
            else runs[0].name
        )
        specs.append(RowSpec(label, runs, selftrain=True))
    return specs


# ----------------------------------------------------------------------------- scoring


def pairs_for_run(
    run, *, selected: list[str] | None, known: list[str], selftrain: bool
) -> list[str]:
    """The pairs a run is scored on (see the module docstring); may be empty."""
    trained = run.train_pairs
    single = trained is not None and len(trained) == 1
    if selftrain and not single:
        raise UserError(
            f"{run.path}: --selftrain needs runs trained on ONE pair (config.yaml data.pairs: "
            f"[name]); this run has data.pairs = {trained}"
        )
    if trained is not None:
        unknown = sorted(set(trained) - set(known))
        if unknown and (single or selected is None):
            raise UserError(
                f"{run.path}: trained on pair {unknown[0]!r}, which the data does not hold"
            )
    if single:
        return [p for p in trained if selected is None or p in selected]
    if selected is not None:
        return sorted(selected)
    return sorted(trained) if trained is not None else list(known)


def check_run_against_data(run, manifest) -> None:
    """Warnings, not errors: scoring a run on other data can be what the user wants."""
    if abs(run.scale - manifest.scale) > 1e-6:
        log.warning(
            "%s: trained at scale %g, the data's scale is %g", run.path, run.scale, manifest.scale
        )
    if not set(manifest.bit_depths) <= set(run.bit_depths):
        log.warning(
            "%s: trained on %s-bit data, scoring %s-bit data",
            run.path,
            run.bit_depths,
            manifest.bit_depths,
        )
    trained_on = run.dataset.get("manifest_sha256")
    if trained_on and trained_on != manifest.sha256:
        log.info("%s: scored on another dataset than it trained on (manifest differs)", run.path)


def load_rows(specs: list[RowSpec], *, weights: str, selected, known: list[str], manifest) -> list:
    """Load every run (on the CPU) and decide its pairs before any prediction: a bad run
    folder fails in seconds, not after an hour of scoring. Returns per spec
    ``[(model, run_info, pairs), ...]``."""
    from aeatrain.run.final import load_run

    loaded = []
    for spec in specs:
        members, seen = [], {}
        for path in spec.runs:
            model, run = load_run(path, weights=weights, device="cpu")
            check_run_against_data(run, manifest)
            pairs = pairs_for_run(run, selected=selected, known=known, selftrain=spec.selftrain)
            for pair in pairs if spec.selftrain else ():
                if pair in seen:
                    raise UserError(
                        f"--selftrain: {seen[pair]} and {path} both trained on {pair!r}"
                    )
                seen[pair] = path
            if pairs:
                members.append((model, run, pairs))
            else:
                log.warning("%s: none of its pairs is among --pairs; left out", path)
        if not members:
            raise UserError(f"row {spec.label!r}: no pair left to score (check --pairs)")
        loaded.append(members)
    return loaded


def evaluate_rows(
    specs: list[RowSpec],
    tilings: list[Tiling],
    *,
    data: str | Path,
    pairs: list[str] | None = None,
    weights: str = "auto",
    device=None,
    rank: int = 0,
    world_size: int = 1,
    gather=None,
    cache_dir: str | None = None,
) -> list[RowResult]:
    """Score every row for every tiling; rows in order, tilings inner.

    The images are streamed, one in memory at a time. With ``world_size`` > 1 this process
    scores only image i % world_size == rank of the needed pairs, and ``gather`` (every
    process's scores -> the list of all of them, a collective) merges the shares, so each
    process returns the same table as a one-process run. ``cache_dir``: a node-local
    folder each shard is staged into whole (aeatrain.data.shardio.stage), as training's
    ``data.cache_dir``.
    """
    from aeatrain.data.manifest import check_pairs, load_manifest

    manifest = load_manifest(data)
    known = manifest.pair_names
    selected = None if pairs is None else check_pairs(pairs, known, manifest.path, option="--pairs")
    loaded = load_rows(specs, weights=weights, selected=selected, known=known, manifest=manifest)
    flat = [(row, member) for row, members in enumerate(loaded) for member in range(len(members))]
    members = [(loaded[row][member][0], loaded[row][member][2]) for row, member in flat]
    needed = sorted({pair for _, run_pairs in members for pair in run_pairs})
    device = choose_device(device)
    mine = set(needed[rank::world_size])
    total = sum(pair in mine for _, run_pairs in members for pair in run_pairs) * len(tilings)
    desc = "evaluate" if world_size == 1 else f"evaluate ({len(mine)} of {len(needed)} images)"

    def check_finite(image, member: int, tiling: int, prediction: np.ndarray) -> None:
        row, index = flat[member]
        finite_output(prediction, loaded[row][index][1].path)

    with tqdm(total=total, desc=desc, unit="image", disable=rank != 0 or None) as bar:
        share = score_share(
            members, manifest, tilings=tilings, rank=rank, world_size=world_size,
            device=device, cache_dir=cache_dir, progress=bar, on_prediction=check_finite,
        )  # fmt: skip
    for model, _ in members:
        model.to("cpu")  # free the GPU
    scores = merge_shares(gather(share) if gather is not None else [share])
    by_run = {
        (*flat[member], tiling, pair): tiles for (member, tiling, pair), tiles in scores.items()
    }
    return _rows(specs, tilings, loaded, by_run)


def _rows(specs, tilings, loaded, scores: dict) -> list[RowResult]:
    """The table's results from every (row, member, tiling, pair) score, in the order a
    one-process run makes them (rows, then tilings; each run's pairs in its own order)."""
    results = []
    for row, (spec, members) in enumerate(zip(specs, loaded)):
        for t, tiling in enumerate(tilings):
            runs = []
            for member, (_, run, run_pairs) in enumerate(members):
                tiles = {pair: scores[(row, member, t, pair)] for pair in run_pairs}
                runs.append(RunScores(
                    run.path, run.model_name, run.step, run.weights_kind, tiles, run.config,
                    run.dataset.get("identity"),
                ))  # fmt: skip
            results.append(RowResult(spec, tiling, runs))
    return results


def process_group() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (``torchrun``, ``accelerate
    launch``: RANK, WORLD_SIZE, MASTER_ADDR/PORT); several processes join a gloo group,
    which only carries the scores (each process predicts on its own device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), world_size


def gather_scores(scores: dict) -> list[dict]:
    """Every process's scores, on every process (a collective)."""
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, scores)
    return parts


def process_device(device: str | None, world_size: int):
    """The device of this process: ``--device`` if given; else, when several processes
    share a machine's GPUs, the one of LOCAL_RANK."""

    if device is None and world_size > 1 and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return choose_device(device)


# ----------------------------------------------------------------------------- output

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


def markdown_report(results: list[RowResult], *, data: str, device: str, seconds: float) -> str:
    return "\n".join(
        [
            "# Evaluation",
            "",
            f"Data: `{data}`. Device: {device}. {seconds:.1f} s. aeatrain {__version__}.",
            f"Command: `{' '.join(['python -m aeatrain.evaluate', *sys.argv[1:]])}`",
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


def metrics_json(results: list[RowResult], *, data: str, manifest_sha256: str, device: str) -> str:
    document = {
        "format": "aeatrain-metrics",
        "format_version": 1,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m aeatrain.evaluate", *sys.argv[1:]]),
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


def main(argv: list[str] | None = None) -> int:
    from aeatrain.data.manifest import load_manifest

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    specs, tilings = row_specs(args), tilings_of(args)
    out = Path(args.out) if args.out else specs[0].runs[0] / "eval"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out must be a folder, this is a file")
    for name in REPORT_FILES:  # before an hour of scoring: never a user's own files
        check_replaceable_file(out / name, overwrite=True, marker=METRICS)
    rank, world_size = process_group()
    device = process_device(args.device, world_size)
    start = time.perf_counter()
    results = evaluate_rows(
        specs, tilings, data=args.data, pairs=args.pairs, weights=args.weights, device=device,
        rank=rank, world_size=world_size, gather=gather_scores if world_size > 1 else None,
        cache_dir=args.cache_dir,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return 0  # the first process writes the table
    manifest = load_manifest(args.data)
    report = markdown_report(results, data=args.data, device=str(device), seconds=seconds)
    atomic_write_text(  # first: it marks the folder's metrics.md as aeatrain's
        out / "metrics.json",
        metrics_json(results, data=args.data, manifest_sha256=manifest.sha256, device=str(device)),
        overwrite=True,
    )
    atomic_write_text(out / "metrics.md", report, overwrite=True)
    print(markdown_table(results))
    print(f"\n{len(results)} row(s) in {seconds:.1f} s on {device}; wrote {out}/metrics.md, .json")
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # CPU: 1.7-3x faster steps, see aeatrain/malloc.py
    run_cli(main)
