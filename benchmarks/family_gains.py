"""Gains per specimen family of a pooled set made by ``python -m data_prep synth-mix``.

    python benchmarks/family_gains.py EVAL [EVAL ...]

Each EVAL is a folder of ``python -m aeatrain.evaluate`` (its metrics.json). A pair of a
synth-mix set is named ``<family>-syn<k>``; the table gives, per evaluation row (a
configuration and seed), the mean over each family's pairs of the pair's dPSNR (dB), then
the same per configuration, mean over seeds. Pairs named otherwise form the family "-".
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from aeatrain.errors import run_cli
from aeatrain.protocol.metrics import read_metrics


def family_of(pair: str) -> str:
    """``grains-syn003`` -> ``grains``; a name without ``-syn`` -> ``-``."""
    family, sep, _ = pair.rpartition("-syn")
    return family if sep else "-"


def family_means(metrics_path: Path) -> dict[str, dict[str, float]]:
    """row label -> family -> mean dPSNR of the family's pairs."""
    document = read_metrics(metrics_path)
    table = {}
    for row in document.rows:
        gains = defaultdict(list)
        for pair, scores in row.pairs.items():
            if scores.mean.get("dpsnr") is not None:
                gains[family_of(pair)].append(scores.mean["dpsnr"])
        table[row.label or metrics_path.parent.name] = {
            family: statistics.fmean(values) for family, values in sorted(gains.items())
        }
    return table


def configuration(label: str) -> str:
    """``unet-pooled-seed1`` -> ``unet-pooled``."""
    head, sep, seed = label.rpartition("-seed")
    return head if sep and seed.isdigit() else label


def markdown(rows: dict[str, dict[str, float]]) -> str:
    families = sorted({family for row in rows.values() for family in row})
    lines = ["| run | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[f]:+.2f}" if f in row else "-"
                                                  for f in families) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("evaluations", nargs="+", type=Path, help="folders holding metrics.json")
    args = parser.parse_args(argv)
    runs = {}
    for folder in args.evaluations:
        for label, row in family_means(folder / "metrics.json").items():
            runs[label if len(args.evaluations) == 1 else folder.name] = row
    grouped = defaultdict(list)
    for label, row in runs.items():
        grouped[configuration(label)].append(row)
    means = {
        name: {f: statistics.fmean(r[f] for r in rows if f in r) for f in rows[0]}
        for name, rows in sorted(grouped.items())
    }
    print("dPSNR (dB) per family, each run:\n\n" + markdown(runs))
    print("\nmean over seeds:\n\n" + markdown(means))
    return 0


if __name__ == "__main__":
    run_cli(main)
