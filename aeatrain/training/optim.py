"""Adam, the staircase learning-rate schedule and the pixel loss (DESIGN.md section 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.nn import functional

from aeatrain.config import OptimConfig


def build_optimizer(
    params: Iterable[torch.nn.Parameter], optim: OptimConfig, *, fused: bool = False
) -> torch.optim.Adam:
    """Adam as the published code uses it; the learning rate is set per step by the trainer.

    ``fused``: one kernel updates every parameter, and a step can be skipped on the device
    (:func:`skip_next_step_if`). Off, PyTorch's default implementation runs (CPU runs keep
    their numbers).
    """
    return torch.optim.Adam(
        params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay,
        fused=fused or None,
    )  # fmt: skip


def skip_next_step_if(optimizer: torch.optim.Adam, skip: torch.Tensor) -> None:
    """Make the next ``step()`` of a fused Adam a no-op where ``skip`` (0-dim bool, on the
    device) is true: weights, moments and step counts stay as they are, and the host never
    reads ``skip``. The hook is the one ``torch.amp.GradScaler`` uses (``found_inf``)."""
    optimizer.found_inf = skip.float()


def learning_rate(step: int, optim: OptimConfig) -> float:
    """Staircase decay: ``lr * factor ** floor(step / every)`` (paper: 4e-4 halved per 10k).

    A pure function of the step rather than a scheduler object, so a resumed run needs no
    scheduler state, and accelerate cannot step it once per process (its
    ``AcceleratedScheduler`` does that when ``split_batches`` is off).
    """
    return optim.lr * optim.lr_decay_factor ** (step // optim.lr_decay_every)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def pixel_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``l1`` (mean absolute error, the paper's) or ``l2`` (mean squared error)."""
    losses = {"l1": functional.l1_loss, "l2": functional.mse_loss}
    return losses[name]
