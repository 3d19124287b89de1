"""Score trained runs with the paper's protocol: ``python -m aeatrain.evaluate``.

    python -m aeatrain.evaluate --run RUN [--run RUN2 ...] --data DATA
        [--selftrain RUN_A RUN_B ... | --selftrain 'runs/self_*']
        [--tile S [--margin 32] | --tiles 512,384,256,128] [--tta none|d4]
        [--pairs NAME ...] [--weights auto|ema|raw] [--out DIR] [--device cpu|cuda]

Each registered LR image of DATA's ``full`` split is predicted whole (reflect-padded to a
multiple of 16 and cropped back) or, with ``--tile``/``--tiles``, with the paper's tiles
(tile S, margin 32: aeatrain.protocol.inference.predict_paper_tiles), and with ``--tta
d4`` as the mean of its 8 flips/rotations (aeatrain.protocol.inference.self_ensemble).
The three test tiles of each image are scored (aeatrain.protocol.metrics: cv2.PSNR and
SSIM on the 0..255 scale, the prediction clipped; gains over the input; Otsu
foreground/background on the HR tile), averaged over tiles, then over pairs.

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

This module is the command; its library is aeatrain/protocol/: the rows and their runs
(evaluation.py), the report (report.py), the scoring (scoring.py). Training's validation
(aeatrain/train.py) scores through the same functions (``score_pairs`` -> ``score_share``,
``merge_shares``, ``summarize_pairs``), so a run's last logged val/dpsnr and val/dssim
are this command's figures for its final weights.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from pathlib import Path

from aeatrain.errors import UserError, run_cli
from aeatrain.files.atomic import atomic_write_text
from aeatrain.files.outputs import METRICS, check_replaceable_file
from aeatrain.malloc import keep_freed_memory
from aeatrain.protocol.evaluation import (
    RowSpec,
    evaluate_rows,
    gather_scores,
    process_device,
    process_group,
)
from aeatrain.protocol.inference import TTA_MODES, check_paper_tiling
from aeatrain.protocol.report import markdown_report, markdown_table, metrics_json
from aeatrain.protocol.scoring import PAPER_MARGIN, Tiling
from aeatrain.run.options import add_loading_arguments

log = logging.getLogger(__name__)

REPORT_FILES = ("metrics.md", "metrics.json")


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
    command = " ".join(["python -m aeatrain.evaluate", *sys.argv[1:]])
    report = markdown_report(
        results, data=args.data, device=str(device), seconds=seconds, command=command
    )
    document = metrics_json(
        results, data=args.data, manifest_sha256=manifest.sha256, device=str(device),
        command=command,
    )  # fmt: skip
    # metrics.json first: it marks the folder's metrics.md as aeatrain's
    atomic_write_text(out / "metrics.json", document, overwrite=True)
    atomic_write_text(out / "metrics.md", report, overwrite=True)
    print(markdown_table(results))
    print(f"\n{len(results)} row(s) in {seconds:.1f} s on {device}; wrote {out}/metrics.md, .json")
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # CPU: 1.7-3x faster steps, see aeatrain/malloc.py
    run_cli(main)
