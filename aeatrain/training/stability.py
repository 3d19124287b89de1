"""Skipped steps: a non-finite loss or gradient, or an fp16 overflow, must not reach the weights.

Mixed precision with fp16 skips a step now and then by design (the loss scaler finds an
overflow and lowers the scale); bf16 and float32 runs skip only when something went wrong.
Either way the weights are left untouched. Many skipped steps IN A ROW mean the run has
diverged: it stops with one line naming the steps, and the last checkpoint (written
before, with finite weights) is the place to restart from, e.g. with a lower learning rate.
"""

from __future__ import annotations

import torch

from aeatrain.errors import UserError


class TrainingDiverged(UserError):
    """Too many consecutive skipped steps; the message names them and the setting."""


class SkippedSteps:
    """Counts skipped steps, total and consecutive; raises after ``limit`` in a row."""

    def __init__(self, limit: int, total: int = 0, consecutive: int = 0):
        self.limit = limit
        self.total = total
        self.consecutive = consecutive

    def record(self, step: int, skipped: bool, reason: str = "") -> None:
        """Note whether ``step`` (0-based, the step just attempted) updated the weights."""
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            first = step - self.consecutive + 1
            raise TrainingDiverged(
                f"training diverged: steps {first}..{step} were all skipped ({reason}); "
                f"train.max_skipped_steps={self.limit}. Restart from the last checkpoint "
                f"with a lower optim.lr or optim.grad_clip_norm set"
            )

    def state(self) -> dict[str, int]:
        return {"skipped_steps": self.total, "consecutive_skipped": self.consecutive}


def all_finite(module: torch.nn.Module) -> bool:
    """Every parameter and buffer finite: checked before a checkpoint is written."""
    tensors = list(module.parameters()) + list(module.buffers())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def snapshot_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of the module's buffers (BatchNorm running statistics), taken before a forward.

    A forward in training mode updates BatchNorm's running statistics before the loss is
    known: a batch that overflows would leave NaN in them even though its step is skipped.
    The copies are small (two vectors per BatchNorm layer).
    """
    return [buffer.detach().clone() for buffer in module.buffers()]


@torch.no_grad()
def restore_buffers(
    module: torch.nn.Module, saved: list[torch.Tensor], *, where: torch.Tensor | None = None
) -> None:
    """Put the copies back; with ``where`` (0-dim bool) only where it is true, selected on
    the device so that the host need not read it."""
    for buffer, copy in zip(module.buffers(), saved, strict=True):
        buffer.copy_(copy if where is None else torch.where(where, copy, buffer))
