"""``--weights`` and ``--device``: how every tool that loads a run chooses them.

Kept apart from the CLIs (evaluate, predict, refmaps share it; no module imports a CLI)
and beside :func:`aeatrain.run.final.load_run`, whose two arguments they are.
"""

from __future__ import annotations

import argparse

from aeatrain.protocol.inference import choose_device
from aeatrain.run.final import WEIGHT_FILES


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights`` (auto, raw, ema) and ``--device`` on ``parser``."""
    parser.add_argument(
        "--weights",
        choices=("auto", *WEIGHT_FILES),
        default="auto",
        help="auto: EMA if the run has it",
    )
    parser.add_argument(
        "--device",
        type=choose_device,  # a bad or absent device: one line, exit 2, before any work
        help="cpu, cuda, cuda:1 ...; default: GPU if any",
    )
