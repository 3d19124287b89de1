"""``--weights`` and ``--device``: how every tool that loads a run chooses them.

Kept apart from the CLIs (evaluate, predict, refmaps share it; no module imports a CLI)
and beside :func:`aeatrain.run.final.load_run`, whose two arguments they are;
:func:`choose_device` is the one reading of a device name.
"""

from __future__ import annotations

import argparse

import torch

from aeatrain.errors import UserError
from aeatrain.run import WEIGHT_FILES


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given and usable here, else the GPU when one is visible, else the CPU.

    A name torch does not know, or a device this machine lacks (``cuda`` without a GPU,
    ``cuda:3`` with two), is a :class:`UserError` naming ``--device``.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {device}: not a device (cpu, cuda, cuda:1, ...)") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        if chosen.index is not None and chosen.index >= count:
            raise UserError(f"--device {device}: only {count} CUDA GPU(s) visible here")
    elif chosen.type != "cpu":
        try:
            torch.empty(0, device=chosen)
        except (RuntimeError, AssertionError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "unavailable"
            raise UserError(f"--device {device}: not usable here ({reason})") from None
    return chosen


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
