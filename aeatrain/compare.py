"""Gather several evaluations into one table, mean and spread over seeds.

    python -m aeatrain.compare EVAL_DIR [EVAL_DIR ...] [--out results.md [--overwrite]]

Each EVAL_DIR holds the ``metrics.json`` that ``python -m aeatrain.evaluate --out EVAL_DIR``
wrote (one row: a pooled run, or a group of self-training runs). Folders whose names differ
only by a trailing seed (``unet-pooled-seed0``, ``unet-pooled-seed1``) are one row of the
table: the mean over the seeds, with the sample standard deviation and every seed's value,
so a user sees whether an ordering of models holds beyond the noise of one training run.
All evaluations must have scored the same data (manifest checksum) and pairs.

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

from aeatrain.errors import UserError, run_cli
from aeatrain.imageio import atomic_write_text
from aeatrain.outputs import check_replaceable_file, record_outputs

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


def read_evaluation(folder: Path) -> dict:
    """The single row of ``folder/metrics.json`` with the data it was scored on."""
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such file (run python -m aeatrain.evaluate --out {folder})"
        ) from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    rows = metrics.get("rows") or []
    if len(rows) != 1:
        raise UserError(f"{path}: holds {len(rows)} rows; compare takes one evaluation per folder")
    row = rows[0]
    pairs = sorted(row.get("pairs", {}))
    return {"summary": row["summary"], "pairs": pairs, "data": metrics["data"]["manifest_sha256"]}


def group_evaluations(folders: list[Path]) -> tuple[list[Group], dict]:
    """Groups in the order of their first folder; checks all scored the same data and pairs."""
    groups: dict[str, Group] = {}
    reference: dict | None = None
    for folder in folders:
        evaluation = read_evaluation(folder)
        if reference is None:
            reference = {**evaluation, "folder": folder}
        elif (evaluation["data"], evaluation["pairs"]) != (reference["data"], reference["pairs"]):
            raise UserError(
                f"{folder}: scored other data or pairs than {reference['folder']}; "
                f"compare evaluations of the same dataset and pairs only"
            )
        match = SEED_SUFFIX.search(folder.name)
        label = folder.name[: match.start()] if match else folder.name
        seed = match.group(1) if match else "-"
        groups.setdefault(label, Group(label)).add(seed, evaluation["summary"])
    return list(groups.values()), reference or {}


# Xie et al., IEEE TMI 2022, Table 1 (real SEM data), as far as DESIGN.md section 5 gives
# it: pooled dPSNR (dB) and dSSIM, AEANet's foreground/background dPSNR. The figures of
# VDSR, EDSR, RCAN, LB-NLM and of the self-training column are not in our sources: they are
# left out rather than guessed.
PAPER_TABLE_1: dict[str, dict[str, float]] = {
    "unet": {"pooled:dpsnr": 1.46, "pooled:dssim": 0.074},
    "gvtnet": {"pooled:dpsnr": 1.87, "pooled:dssim": 0.086},
    "aeanet": {"pooled:dpsnr": 2.10, "pooled:dssim": 0.087, "pooled:fg_dpsnr": 1.15,
               "pooled:bg_dpsnr": 2.42},
}  # fmt: skip
TABLE_1_METHODS = {"vdsr": "VDSR", "edsr": "EDSR", "rcan": "RCAN", "lbnlm": "LB-NLM (ours)",
                   "unet": "U-Net", "gvtnet": "GVTNet", "aeanet": "AEANet"}  # fmt: skip
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
    known = [m for m in TABLE_1_METHODS if m in by_method]
    methods = known + [m for m in by_method if m not in TABLE_1_METHODS]
    header = ["method", "seeds"]
    for _, _, title, _ in TABLE_1_COLUMNS:
        header += [f"{title} (ours)", f"{title} (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        kinds = by_method[method]
        seeds = "/".join(
            str(len(kinds[k].seeds)) if k in kinds else "-" for k in ("pooled", "self")
        )
        cells = [TABLE_1_METHODS.get(method, method), seeds]
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
    only when its folder's ledger (aeatrain/outputs.py) says aeatrain wrote it."""
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
