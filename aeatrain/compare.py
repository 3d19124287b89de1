"""Gather several evaluations into one table, mean and spread over seeds.

    python -m aeatrain.compare EVAL_DIR [EVAL_DIR ...] [--out results.md [--overwrite]]

Each EVAL_DIR holds the ``metrics.json`` that ``python -m aeatrain.evaluate --out EVAL_DIR``
wrote (one row: a pooled run, or a group of self-training runs). Evaluations of the same
setup (what was run, as metrics.json records it: model, config, the dataset trained on,
weights and prediction; not the seed, run folder or checkpoint cadence) whose folder names
differ only by a trailing seed (``unet-pooled-seed0``, ``unet-pooled-seed1``; a folder named
``eval``, evaluate's default, is named by its run folder) are one row of the table: the mean
over the seeds, with the sample standard deviation and every seed's value, so a user sees
whether an ordering of models holds beyond the noise of one training run. Refused, in one
line: one name for two setups (naming the first key that differs), an evaluation given
twice or two of one setup and seed, and evaluations of other data (manifest checksum) or
pairs.

Below that table comes the paper's Table 1 layout: one line per method (``<method>-pooled``
and ``<method>-self`` folders), pooled dPSNR / dSSIM, self-training dPSNR / dSSIM and the
pooled foreground / background dPSNR, each ours (mean ± sd over seeds) beside the paper's
figure where our sources give it (``PAPER_TABLE_1``; "-" where they do not).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from aeatrain.config.load import read_saved_config
from aeatrain.errors import UserError, run_cli
from aeatrain.files.atomic import atomic_write_text
from aeatrain.files.outputs import check_replaceable_file, record_outputs
from aeatrain.models import MODELS
from aeatrain.protocol.metrics import ScoredRun, read_metrics

SEED_SUFFIX = re.compile(r"[-_]seed(\d+)$")
COLUMNS = (("dpsnr", "dPSNR (dB)", 2), ("dssim", "dSSIM", 4),
           ("fg_dpsnr", "fg dPSNR (dB)", 2), ("bg_dpsnr", "bg dPSNR (dB)", 2))  # fmt: skip


@dataclass
class Group:
    """The evaluations of one configuration, one per seed."""

    label: str
    seeds: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)  # column -> one per seed

    def add(self, seed: str, summary: dict[str, float]) -> None:
        self.seeds.append(seed)
        for key, _, _ in COLUMNS:
            self.values.setdefault(key, []).append(float(summary[key]))

    def mean(self, key: str) -> float:
        return statistics.fmean(self.values[key])

    def sd(self, key: str) -> float | None:
        values = self.values[key]
        return statistics.stdev(values) if len(values) > 1 else None


# Config keys that do not change what a run learns: where it ran, how often it saved, and
# the seed (the seeds of one setup are what a row averages over).
NOT_THE_SETUP = (
    "train.seed", "train.run_dir", "train.resume", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_skipped_steps", "data.root", "data.cache_dir",
    "data.num_workers", "data.verify", "logging",
)  # fmt: skip
# (an LB-NLM run's seed is lbnlm.seed: see _setup_config)


@dataclass
class Evaluation:
    """One EVAL_DIR: its row's figures and what was run to get them."""

    folder: Path
    label: str  # the folder's name without its seed suffix
    seed: str  # train.seed of the row's runs ("-" where unknown)
    setup: dict  # what was run, the seed and run folder left out
    summary: dict[str, float]
    pairs: list[str]
    data: str  # the manifest checksum of the data it was scored on


def read_evaluation(folder: Path) -> Evaluation:
    """The single row of ``folder/metrics.json`` with the data it was scored on and the
    setup of its runs; UserError naming the file for anything compare cannot read."""
    path = folder / "metrics.json"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: a file; compare takes the folders evaluate wrote (--out)")
    if not path.is_file():
        raise UserError(f"{path}: no such file (run python -m aeatrain.evaluate --out {folder})")
    metrics = read_metrics(path)
    if len(metrics.rows) != 1:
        raise UserError(
            f"{path}: holds {len(metrics.rows)} rows; compare takes one evaluation per folder"
        )
    row = metrics.rows[0]
    missing = [k for k, _, _ in COLUMNS if row.summary.get(k) is None]
    if missing:
        raise UserError(f"{path}: its row has no summary figure {missing[0]!r}")
    summary = {key: value for key, value in row.summary.items() if value is not None}
    data = metrics.data.manifest_sha256
    label, folder_seed = _label(folder)
    runs = [_recorded_run(run, path) for run in row.runs]
    if not runs:
        raise UserError(f"{path}: its row lists no runs; evaluate it again")
    seeds = {
        _section(run["config"], "train").get("seed", _section(run["config"], "lbnlm").get("seed"))
        for run in runs
    }
    seed = str(seeds.pop()) if len(seeds) == 1 and None not in seeds else folder_seed or "-"
    selftrain = row.kind == "selftrain"  # one run per pair, alike but for data.pairs
    distinct = {
        json.dumps(setup, sort_keys=True): setup
        for setup in ({**run, "config": _setup_config(run["config"], selftrain)} for run in runs)
    }
    setup = {"kind": row.kind, "prediction": row.prediction,
             "runs": [distinct[key] for key in sorted(distinct)]}  # fmt: skip
    return Evaluation(folder, label, seed, setup, summary, sorted(row.pairs), data)


def _label(folder: Path) -> tuple[str, str | None]:
    """(name without its seed suffix, the suffix's seed); ``RUN/eval`` is named RUN."""
    name = folder.absolute().parent.name if folder.name == "eval" else folder.name
    match = SEED_SUFFIX.search(name)
    return (name[: match.start()], match.group(1)) if match else (name, None)


def _recorded_run(run: ScoredRun, path: Path) -> dict:
    """What metrics.json says was run: model, weights, config, dataset trained on. A
    metrics.json of an aeatrain before they were recorded: read from the run folder."""
    config, trained_on = run.config, run.trained_on
    if config is None:
        config, trained_on = _read_run_folder(Path(run.path), path)
    return {"model": run.model, "weights": run.weights, "config": config,
            "trained_on": trained_on}  # fmt: skip


def _read_run_folder(run_dir: Path, path: Path) -> tuple[dict, str | None]:
    from aeatrain.run.final import CONFIG_YAML, read_run_json  # imports torch: older files only

    try:
        config = read_saved_config(run_dir / CONFIG_YAML)
        info = read_run_json(run_dir)
    except UserError as err:
        raise UserError(
            f"{path}: does not record what its run {run_dir} was (an older aeatrain wrote it) "
            f"and the run folder cannot be read ({err}); evaluate the run again"
        ) from None
    return config, (info.dataset or {}).get("identity")


def _setup_config(config: dict, selftrain: bool) -> dict:
    """``config`` without :data:`NOT_THE_SETUP` (and data.pairs in a self-training row).

    LB-NLM (``python -m aeatrain.lbnlm``) records in its model section and its ``lbnlm``
    section what its seeded search chose and measured, not what was asked of it: of those
    only the model's name is its setup."""
    ignored = set(NOT_THE_SETUP) | ({"data.pairs"} if selftrain else set())
    setup = {}
    for section, values in config.items():
        if section in ignored or section == "lbnlm":
            continue
        if isinstance(values, dict):
            values = {k: v for k, v in values.items() if f"{section}.{k}" not in ignored}
        setup[section] = values
    if _section(config, "model").get("name") == "lbnlm":
        setup["model"] = {"name": "lbnlm"}
    return setup


def _section(config: dict, name: str) -> dict:
    values = config.get(name)
    return values if isinstance(values, dict) else {}


def _first_difference(a, b, where: str = "") -> str:
    """``"model.name 'aeanet' vs 'unet'"``: the first leaf where two setups differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}".lstrip("."))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for x, y in zip(a, b, strict=True):
            if x != y:
                return _first_difference(x, y, where)
    return f"{where or 'setup'} {a!r} vs {b!r}"


def group_evaluations(folders: list[Path]) -> tuple[list[Group], dict]:
    """Groups in the order of their first folder; checks all scored the same data and
    pairs, that one name means one setup, and that no evaluation counts twice."""
    groups: dict[str, Group] = {}
    first: dict[str, Evaluation] = {}  # label -> its first evaluation
    seen: dict[tuple[str, str], Evaluation] = {}  # (label, seed) -> evaluation
    folders_seen: dict[Path, Path] = {}
    reference: Evaluation | None = None
    for folder in folders:
        if folder.resolve() in folders_seen:
            raise UserError(f"{folder}: given twice (as {folders_seen[folder.resolve()]})")
        folders_seen[folder.resolve()] = folder
        evaluation = read_evaluation(folder)
        if reference is None:
            reference = evaluation
        elif (evaluation.data, evaluation.pairs) != (reference.data, reference.pairs):
            raise UserError(
                f"{folder}: scored other data or pairs than {reference.folder}; "
                f"compare evaluations of the same dataset and pairs only"
            )
        label = evaluation.label
        if label in first and first[label].setup != evaluation.setup:
            raise UserError(
                f"{folder} and {first[label].folder}: one name ({label!r}) for two setups "
                f"({_first_difference(first[label].setup, evaluation.setup)}); a row averages "
                f"seeds of one setup only: name their folders apart"
            )
        first.setdefault(label, evaluation)
        twin = seen.get((label, evaluation.seed))
        if twin is not None:
            raise UserError(
                f"{folder} and {twin.folder}: the same setup and seed {evaluation.seed} "
                f"(the same run twice?); compare counts each run once"
            )
        seen[(label, evaluation.seed)] = evaluation
        groups.setdefault(label, Group(label)).add(evaluation.seed, evaluation.summary)
    if reference is None:
        return [], {}
    return list(groups.values()), {"summary": reference.summary, "pairs": reference.pairs}


# Xie et al., IEEE TMI 2022, Table 1 (real SEM data), as far as docs/method.md section 5 gives
# it: pooled dPSNR (dB) and dSSIM, AEANet's foreground/background dPSNR. The figures of
# VDSR, EDSR, RCAN, LB-NLM and of the self-training column are not in our sources: they are
# left out rather than guessed.
PAPER_TABLE_1: dict[str, dict[str, float]] = {
    "unet": {"pooled:dpsnr": 1.46, "pooled:dssim": 0.074},
    "gvtnet": {"pooled:dpsnr": 1.87, "pooled:dssim": 0.086},
    "aeanet": {"pooled:dpsnr": 2.10, "pooled:dssim": 0.087, "pooled:fg_dpsnr": 1.15,
               "pooled:bg_dpsnr": 2.42},
}  # fmt: skip
TABLE_1_ROWS = ("vdsr", "edsr", "rcan", "lbnlm", "unet", "gvtnet", "aeanet")  # the paper's order
TABLE_1_COLUMNS = (("pooled", "dpsnr", "pooled dPSNR", 2), ("pooled", "dssim", "pooled dSSIM", 3),
                   ("self", "dpsnr", "self dPSNR", 2), ("self", "dssim", "self dSSIM", 3),
                   ("pooled", "fg_dpsnr", "fg dPSNR", 2), ("pooled", "bg_dpsnr", "bg dPSNR", 2))  # fmt: skip


def _cell(group: Group, key: str, digits: int) -> str:
    sd = group.sd(key)
    mean = f"{group.mean(key):+.{digits}f}"
    return mean if sd is None else f"{mean} ± {sd:.{digits}f}"


def table(groups: list[Group], reference: dict) -> str:
    """Markdown: one line per group, mean ± sd over seeds, and the per-seed dPSNR."""
    header = ["configuration", "seeds", *[title for _, title, _ in COLUMNS], "dPSNR per seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        per_seed = ", ".join(f"{v:+.2f}" for v in group.values["dpsnr"])
        cells = [group.label, str(len(group.seeds)),
                 *[_cell(group, key, digits) for key, _, digits in COLUMNS], per_seed]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    summary = reference.get("summary", {})
    lines.append(
        f"\nInput (registered bicubic LR) on the same {len(reference.get('pairs', []))} pairs: "
        f"PSNR {summary.get('input_psnr', float('nan')):.2f} dB, "
        f"SSIM {summary.get('input_ssim', float('nan')):.4f}; every d-figure is the gain over "
        f"it (mean ± sample standard deviation over seeds)."
    )
    return "\n".join(lines) + "\n"


def split_label(label: str) -> tuple[str, str | None]:
    """``"vdsr-pooled"`` -> ("vdsr", "pooled"); a label without the suffix -> (label, None)."""
    for kind in ("pooled", "self"):
        if label.endswith(f"-{kind}"):
            return label[: -len(kind) - 1], kind
    return label, None


def table_1(groups: list[Group]) -> str:
    """The paper's Table 1 layout: methods as rows, ours beside the paper's figures."""
    by_method: dict[str, dict[str, Group]] = {}
    for group in groups:
        method, kind = split_label(group.label)
        if kind is not None:
            by_method.setdefault(method, {})[kind] = group
    known = [m for m in TABLE_1_ROWS if m in by_method]
    methods = known + [m for m in by_method if m not in TABLE_1_ROWS]
    header = ["method", "seeds"]
    for _, _, title, _ in TABLE_1_COLUMNS:
        header += [f"{title} (ours)", f"{title} (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        kinds = by_method[method]
        seeds = "/".join(
            str(len(kinds[k].seeds)) if k in kinds else "-" for k in ("pooled", "self")
        )
        cells = [MODELS[method].label if method in MODELS else method, seeds]
        for kind, key, _, digits in TABLE_1_COLUMNS:
            ours = _cell(kinds[kind], key, digits) if kind in kinds else "-"
            paper = PAPER_TABLE_1.get(method, {}).get(f"{kind}:{key}")
            cells += [ours, "-" if paper is None else f"{paper:+.{digits}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nSeeds: pooled/self. fg/bg: foreground/background dPSNR of the pooled model. "
        "Paper: Xie et al., IEEE TMI 2022, Table 1, real SEM data, 120,000 steps; '-' where "
        "our sources do not give the paper's figure (VDSR, EDSR, RCAN, LB-NLM and the "
        "self-training column) or where a row was not run."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def write_table(out: Path, text: str, *, overwrite: bool) -> None:
    """Write ``out`` atomically; an existing file is replaced only with ``overwrite`` and
    only when its folder's ledger (aeatrain/files/outputs.py) says aeatrain wrote it."""
    check_replaceable_file(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_outputs(out.parent, [out.name], tool="aeatrain.compare")
    atomic_write_text(out, text, overwrite=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("evaluations", nargs="+", type=Path, help="folders holding metrics.json")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if an earlier aeatrain.compare wrote it (never another file)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    groups, reference = group_evaluations(args.evaluations)
    text = table(groups, reference) + "\n## Table 1 layout\n\n" + table_1(groups)
    if args.out:
        write_table(args.out, text, overwrite=args.overwrite)
    print(text, end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
