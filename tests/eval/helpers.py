"""Small run folders for the evaluation tests, written through aeatrain.run.final."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from aeatrain.models import build_model
from aeatrain.run.final import write_run_files


def make_model(model_name: str = "unet", *, seed: int = 0, **model_kwargs) -> torch.nn.Module:
    """build_model with a seed, and BatchNorm statistics away from the identity, so
    eval-mode outputs are not trivially those of a fresh init."""
    torch.manual_seed(seed)
    model = build_model(model_name, **model_kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    return model


def make_run(
    run_dir: str | Path,
    *,
    model_name: str = "unet",
    pairs: list[str] | None = None,
    ema: bool = False,
    seed: int = 0,
    step: int = 10,
    scale: float = 2.0,
    **model_kwargs,
) -> Path:
    """A finished run folder holding :func:`make_model`'s untrained small model.

    ``pairs`` goes to config.yaml's ``data.pairs`` (self-training); ``scale`` to run.json.
    """
    model_kwargs.setdefault("base_channels", 4)
    model = make_model(model_name, seed=seed, **model_kwargs)
    ema_model = None
    if ema:
        ema_model = build_model(model_name, **model_kwargs)
        ema_model.load_state_dict(model.state_dict())
        with torch.no_grad():
            ema_model.head.weight.mul_(0.5)  # different from raw, so tests can tell them apart
    config = {"model": {"name": model_name, **model_kwargs}, "data": {"pairs": pairs}}
    write_run_files(
        run_dir,
        model=model,
        model_name=model_name,
        model_kwargs=model_kwargs,
        scale=scale,
        bit_depths=[8],
        dataset={"path": "DATA", "manifest_sha256": None},
        step=step,
        config_yaml=yaml.safe_dump(config),
        ema_model=ema_model,
    )
    return Path(run_dir)
