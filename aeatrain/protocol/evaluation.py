"""Scoring runs as the rows of the paper's table: which pairs each run is scored on, a
self-training row's runs (one per pair), every run loaded before any prediction, and the
images split over the processes of a launcher (``torchrun``, ``accelerate launch``).
``python -m aeatrain.evaluate`` is the command; the scores come from
:func:`aeatrain.protocol.scoring.score_share`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aeatrain.errors import UserError
from aeatrain.protocol.metrics import TileScores
from aeatrain.protocol.scoring import Tiling, merge_shares, score_share, summarize_pairs
from aeatrain.run.final import finite_output
from aeatrain.run.options import choose_device

log = logging.getLogger(__name__)


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
