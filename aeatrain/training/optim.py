"""Adam, the learning-rate schedule (the paper's staircase, or cosine; optional warm-up) and
the pixel loss (docs/method.md section 4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.nn import functional

from aeatrain.config.schema import OptimConfig


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


def learning_rate(step: int, optim: OptimConfig, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a ``total_steps`` run.

    Staircase (paper: 4e-4 halved per 10k): ``lr * factor ** floor(step / every)``. Cosine:
    ``lr * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of the steps after the warm-up
    done, so the rate reaches 0 at ``total_steps``. A warm-up scales either by
    ``(step + 1) / warmup_steps`` over its first ``warmup_steps`` steps.

    A pure function of the step rather than a scheduler object, so a resumed run needs no
    scheduler state, and accelerate cannot step it once per process (its
    ``AcceleratedScheduler`` does that when ``split_batches`` is off).
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "cosine":
        span = max(total_steps - optim.warmup_steps, 1)
        done = min((step - optim.warmup_steps) / span, 1.0)
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return optim.lr * optim.lr_decay_factor ** (step // optim.lr_decay_every)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def pixel_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``l1`` (mean absolute error, the paper's) or ``l2`` (mean squared error)."""
    losses = {"l1": functional.l1_loss, "l2": functional.mse_loss}
    return losses[name]
