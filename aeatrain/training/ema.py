"""Exponential moving average (EMA) of a model's weights, an option of the trainer.

The averaged weights often score a little better than the raw ones at the end of a
schedule; they are validated and exported separately (``val_ema/*``,
``model_ema.safetensors``), never mixed into the raw weights the paper's protocol uses.
The average is kept in float32 whatever precision training runs in. BatchNorm running
statistics are not averaged: an EMA model takes the live model's buffers when it is
materialised, the usual convention. The trainer registers the average with accelerate's
checkpointing (``state_dict``/``load_state_dict``), so ``save_state``/``load_state`` keep it.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    """``ema = decay * ema + (1 - decay) * weight`` after each optimizer step that was taken."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None):
        """The average starts at ``model``'s weights, in float32 on ``device`` (default:
        where they are): the trainer builds it before accelerate moves the model to the
        training device (and DeepSpeed makes 16-bit weights of it)."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self._restored = 0  # steps folded in before load_state_dict, counted on the host
        self._taken: torch.Tensor | None = None  # steps folded in since, on the device
        self.shadow = {
            name: param.detach().to(device, torch.float32, copy=True)
            for name, param in model.named_parameters()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, taken: torch.Tensor) -> None:
        """Fold the current weights of ``model`` (the unwrapped module) into the average
        where ``taken`` (0-dim bool on the device) is true, without the host reading it;
        the steps folded in are counted on the device too, read by :attr:`updates`."""
        weight = taken.float() * (1.0 - self.decay)  # 0 leaves the average as it is
        self._taken = taken.long() if self._taken is None else self._taken + taken.long()
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), weight)

    @property
    def updates(self) -> int:
        """The number of steps folded into the average (reads the device's count)."""
        return self._restored + (0 if self._taken is None else int(self._taken))

    @torch.no_grad()
    def copy_to(self, target: nn.Module) -> nn.Module:
        """Write the averaged weights into ``target`` (a model of the same architecture).

        The trainer builds ``target`` fresh and loads the live state into it first, so it
        also holds the live BatchNorm statistics; a deep copy of a model under DeepSpeed
        (hooks on its parameters) is not needed.
        """
        for name, param in target.named_parameters():
            param.copy_(self.shadow[name].to(param.dtype))
        return target

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the average and the number of steps folded into it."""
        return {"updates": self.updates, "shadow": self.tensors()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (tensors on any device; copied into the average's)."""
        self.load_tensors(state["shadow"], state["updates"])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name, for a safetensors file."""
        return {name: tensor.contiguous() for name, tensor in self.shadow.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore what :meth:`tensors` returned; the names must match the model's."""
        if set(tensors) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(tensors))
            extra = sorted(set(tensors) - set(self.shadow))
            raise ValueError(
                f"EMA weights do not match the model: missing {missing}, extra {extra}"
            )
        for name, tensor in tensors.items():
            self.shadow[name].copy_(tensor)
        self._restored, self._taken = updates, None
