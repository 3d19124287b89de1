"""``python -m data_prep <command>``: synth, synth-mix, build, summary, stats, pairs, verify,
index, check-truth.

python -m data_prep synth --out RAW --pairs 22 --seed 0 [--preset realistic] [--family F]
python -m data_prep synth-mix --out RAW --pairs-per-family 4 --seed 0  (then build with
    --pairs-file RAW/pairs.csv: four families, each under its own acquisition settings)
python -m data_prep build --raw RAW --out DATA --workers 2
python -m data_prep build --raw RAW --out DATA --pairs-file PAIRS.csv
python -m data_prep summary DATA
python -m data_prep stats RAW [RAW2 ...]  (real SEM tiles' statistics of HR test tiles)
python -m data_prep pairs DATA        (usable pair names, one a line: for job arrays)
python -m data_prep verify DATA       (hash every shard, index and member once)
python -m data_prep index DATA        (add shard indexes to a format_version 1 dataset)
python -m data_prep check-truth RAW DATA
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time

from aeatrain.errors import UserError, check_finite_options, check_seed, run_cli
from aeatrain.files.microscope import PUBLIC_BAR_ROW as DEFAULT_BAR_ROW
from data_prep import semstats
from data_prep.build import build_dataset
from data_prep.qc import pair_table, summary_text
from data_prep.registration import read_registration
from data_prep.shards import add_indexes
from data_prep.synth.config import PRESET_FAMILY, PRESETS, SynthConfig, preset_config
from data_prep.synth.families import FAMILIES
from data_prep.synth.generate import FORMATS, MIX, synthesize, synthesize_mix
from data_prep.truth import check_truth, truth_table


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _add_synth(commands) -> None:
    p = commands.add_parser("synth", help="write synthetic LR/HR SEM pairs and truth.json")
    p.add_argument("--out", required=True, help="folder to create (RAW)")
    p.add_argument("--pairs", type=int, default=22)
    p.add_argument("--seed", type=int, default=0, help="0 to 4294967295")
    p.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="bmp",
        help="bmp: 8-bit BMP like the public dataset; tif16: 16-bit TIFF; fei-tif, "
        "zeiss-tif: 16-bit LZW TIFFs with the metadata an FEI or Zeiss SEM writes "
        "(pixel size; FEI: the data-bar row)",
    )
    p.add_argument("--scale", type=float, default=2.0, help="HR / LR magnification")
    p.add_argument("--width", type=int, default=1280, help="image area width, pixels")
    p.add_argument("--height", type=int, default=944, help="image area height (bar below)")
    p.add_argument("--bar-rows", type=int, default=80, help="rows of the SEM data bar")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="default: the original generator (byte for byte); realistic: matches the "
        "statistics of real SEM tiles (docs/data_prep.md); the options below override it",
    )
    p.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default=None,
        help="specimen family (default: the preset's, aggregates or clusters)",
    )
    _add_acquisition_options(p)
    p.add_argument("--max-rotation-deg", type=float, default=SynthConfig.max_rotation_deg)
    p.add_argument("--workers", type=int, default=_default_workers())
    p.add_argument(
        "--overwrite", action="store_true", help="replace a synth folder (its truth.json) at --out"
    )


def _add_synth_mix(commands) -> None:
    p = commands.add_parser(
        "synth-mix",
        help="synthetic pairs of several specimen families, each under its own acquisition "
        "settings, for one pooled dataset",
    )
    p.add_argument("--out", required=True, help="folder to create (RAW: a synth folder per "
                   "family and pairs.csv for build --pairs-file)")  # fmt: skip
    p.add_argument("--pairs-per-family", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="family k takes seed + k")
    p.add_argument("--width", type=int, default=1280, help="image area width, pixels")
    p.add_argument("--height", type=int, default=944, help="image area height (bar below)")
    p.add_argument("--bar-rows", type=int, default=80, help="rows of the SEM data bar")
    p.add_argument("--workers", type=int, default=_default_workers())


def _synth_mix(args) -> int:
    start = time.perf_counter()
    rows = synthesize_mix(
        args.out,
        pairs_per_family=args.pairs_per_family,
        seed=args.seed,
        workers=args.workers,
        width=args.width,
        height=args.height,
        bar_rows=args.bar_rows,
    )
    print(
        f"synth-mix: {len(rows)} pairs ({args.pairs_per_family} of each of {', '.join(MIX)}; "
        f"realistic preset, {args.width}x{args.height} + {args.bar_rows}-row bar) in "
        f"{args.out} in {time.perf_counter() - start:.1f} s; build them with "
        f"python -m data_prep build --raw {args.out} --pairs-file {args.out}/pairs.csv --out DATA"
    )
    return 0


# SynthConfig fields settable from the command line (default: the preset's value)
_ACQUISITION_OPTIONS = {
    "dose": "detected electrons per pixel at unit signal, > 0 (lower: noisier)",
    "contrast": "multiplier on the specimen's contrast",
    "shading": "amplitude of slow brightness variation (charging)",
    "bandwidth_px": "detector bandwidth: Gaussian sigma on the recording, px (correlated noise)",
    "line_offset": "std of a brightness offset per scan line, fraction of full scale",
    "drift_px": "RMS of slow drift of the scan position within a frame, px",
    "highlight_gain": "extra detector gain; > 1 clips the brightest pixels",
    "charging": "bright trails after bright features along the scan line",
    "edge_brightening": "multiplier on the specimen's secondary-electron edge rims",
}


def _add_acquisition_options(p) -> None:
    for name, text in _ACQUISITION_OPTIONS.items():
        values = ", ".join(
            f"{k} {PRESETS[k].get(name, getattr(SynthConfig, name)):g}" for k in PRESETS
        )
        p.add_argument(
            "--" + name.replace("_", "-"), type=float, default=None, help=f"{text} ({values})"
        )


def _add_build(commands) -> None:
    p = commands.add_parser("build", help="register, split and shard raw pairs")
    p.add_argument("--raw", required=True, help="folder of <name>_<mag>.<ext> pairs")
    p.add_argument("--out", required=True, help="dataset folder to create (DATA)")
    p.add_argument(
        "--pairs-file",
        help="CSV with a header name,lr,hr listing the pairs (paths relative to --raw); "
        "instead of <name>_<mag> file names",
    )
    p.add_argument(
        "--allow-outside-raw",
        action="store_true",
        help="let the pairs file list files outside --raw (absolute, '..', links out of "
        "it); build only reads them, and never files inside --out",
    )
    p.add_argument(
        "--page",
        type=int,
        help="page of multi-page TIFFs to use, 0 = first (refused without it)",
    )
    p.add_argument("--workers", type=int, default=_default_workers())
    p.add_argument(
        "--overwrite", action="store_true", help="replace a dataset (its manifest.json) at --out"
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--bar-row",
        type=int,
        help="first row of the SEM data bar, cut from every image (default: the row the "
        "vendor metadata records, FEI ResolutionY, TESCAN ImageStripSize, JEOL $CM_FULL_SIZE; "
        f"else {DEFAULT_BAR_ROW} for 1280x1024 images, the public dataset's layout; else a "
        "detected vendor data bar; else none; the summary says which)",
    )
    bar.add_argument(
        "--no-bar", action="store_true", help="cut no data bar, whatever the metadata says"
    )


def _add_stats(commands) -> None:
    p = commands.add_parser(
        "stats",
        help="the statistics of real SEM tiles (docs/data_prep.md) on the HR test tiles of raw folders",
        description="Render each HR test tile as the published figures do (per-tile "
        "min/max, 256 levels, 274x269 nearest neighbour), measure it, and print a markdown "
        "table: one column per raw folder, then the real tiles' figures.",
    )
    p.add_argument("raw", nargs="+", help="raw folders of <name>_<mag>.<ext> pairs")
    p.add_argument("--pairs", type=int, default=8, help="first N pairs of each folder")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--bar-row",
        type=int,
        default=None,
        help=f"first row of the data bar (default: truth.json's, else {DEFAULT_BAR_ROW})",
    )
    bar.add_argument("--no-bar", action="store_true", help="the images have no data bar")


def _stats(args) -> int:
    if args.pairs < 1:
        raise UserError(f"--pairs: {args.pairs} < 1")
    columns = {}
    for raw in args.raw:
        bar_row = args.bar_row or semstats.synthetic_bar_row(raw) or DEFAULT_BAR_ROW
        label = os.path.basename(os.path.normpath(raw))
        columns[label] = semstats.measure_folder(
            raw, pairs=args.pairs, bar_row=None if args.no_bar else bar_row
        )
    print(semstats.stats_table(columns))
    for label, summary in columns.items():
        print(semstats.targets_line(label, summary))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_synth(commands)
    _add_synth_mix(commands)
    _add_build(commands)
    p = commands.add_parser("summary", help="print a built dataset's summary")
    p.add_argument("data", help="dataset folder (DATA)")
    p = commands.add_parser("pairs", help="print a built dataset's pair names, one a line")
    p.add_argument("data", help="dataset folder (DATA)")
    _add_stats(commands)
    p = commands.add_parser(
        "verify", help="check every shard, index and member against the manifest's sha256"
    )
    p.add_argument("data", help="dataset folder (DATA)")
    p.add_argument("--workers", type=int, default=_default_workers(), help="hashing threads")
    p = commands.add_parser(
        "index", help="add shard indexes to a dataset built before they existed (in place)"
    )
    p.add_argument("data", help="dataset folder (DATA) of format_version 1")
    p = commands.add_parser("check-truth", help="corner error of a build against truth.json")
    p.add_argument("raw", help="synthetic raw folder with truth.json")
    p.add_argument("data", help="dataset built from it")
    p.add_argument(
        "--max-error",
        type=float,
        default=0.5,
        help="exit 1 when any corner error exceeds this (HR px)",
    )
    return parser


def _synth(args) -> int:
    config = preset_config(
        args.preset,
        width=args.width,
        height=args.height,
        bar_rows=args.bar_rows,
        scale=args.scale,
        max_rotation_deg=args.max_rotation_deg,
        **{name: getattr(args, name) for name in _ACQUISITION_OPTIONS},
    )
    family = args.family or PRESET_FAMILY[args.preset]
    start = time.perf_counter()
    synthesize(
        args.out,
        pairs=args.pairs,
        seed=args.seed,
        config=config,
        draw=FAMILIES[family],
        image_format=args.format,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(
        f"synth: {args.pairs} pairs ({args.preset} preset, {family}; {args.format}, "
        f"{args.width}x{args.height} + "
        f"{args.bar_rows}-row bar, scale {args.scale:g}, seed {args.seed}) in {args.out} "
        f"in {time.perf_counter() - start:.1f} s; truth in {args.out}/truth.json"
    )
    return 0


def _build(args) -> int:
    start = time.perf_counter()
    command = "python -m data_prep " + shlex.join(sys.argv[1:])
    outcomes = build_dataset(
        args.raw,
        args.out,
        bar_row=args.bar_row,
        no_bar=args.no_bar,
        pairs_file=args.pairs_file,
        outside_raw=args.allow_outside_raw,
        page=args.page,
        workers=args.workers,
        overwrite=args.overwrite,
        command=command,
    )
    print(pair_table(read_registration(args.out)))  # as written
    ok = sum(o.ok for o in outcomes)
    print(
        f"build: {ok} of {len(outcomes)} pairs usable, dataset in {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _verify(args) -> int:
    from aeatrain.data.manifest import load_manifest, verify_dataset

    start = time.perf_counter()
    manifest = load_manifest(args.data)  # reads and checks the manifest
    problems = verify_dataset(manifest, workers=args.workers)
    entries = manifest.all_entries()
    for problem in problems:
        print(f"verify: {problem}", file=sys.stderr)
    if problems:
        raise UserError(f"{args.data}: {len(problems)} of {len(entries)} shards failed verify")
    samples = sum(e.samples for e in entries)
    print(
        f"verify: ok: {len(entries)} shards, {samples} samples of {args.data} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _index(args) -> int:
    indexed = add_indexes(args.data)
    if indexed == 0:
        print(f"index: {args.data} has its shard indexes already (format_version 2)")
    else:
        print(f"index: wrote {indexed} shard indexes; {args.data} is now format_version 2")
    return 0


def _check_truth(args) -> int:
    check = check_truth(args.raw, args.data)
    print(truth_table(check))
    if check.max_px > args.max_error:
        print(
            f"check-truth: max corner error {check.max_px:.4f} px > {args.max_error} px",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    check_finite_options(args)
    if args.command == "synth":
        check_seed(args.seed)
    if args.command == "synth-mix":  # family k takes seed + k
        check_seed(args.seed)
        check_seed(args.seed + len(MIX) - 1, f"--seed + {len(MIX) - 1} (the last family's)")
    if getattr(args, "workers", 1) < 1:
        raise UserError(f"--workers: {args.workers} < 1")
    if getattr(args, "page", None) is not None and args.page < 0:
        raise UserError(f"--page: {args.page} < 0 (0 is the first page)")
    if getattr(args, "bar_row", None) is not None and args.bar_row < 1:
        raise UserError(f"--bar-row: {args.bar_row} must be positive")
    if args.command == "synth":
        return _synth(args)
    if args.command == "synth-mix":
        return _synth_mix(args)
    if args.command == "build":
        return _build(args)
    if args.command == "stats":
        return _stats(args)
    if args.command == "summary":
        print(summary_text(args.data))
        return 0
    if args.command == "pairs":
        from aeatrain.data.sources import pair_names  # reads and checks the manifest

        print("\n".join(pair_names(args.data)))
        return 0
    if args.command == "verify":
        return _verify(args)
    if args.command == "index":
        return _index(args)
    return _check_truth(args)


if __name__ == "__main__":
    run_cli(main)
