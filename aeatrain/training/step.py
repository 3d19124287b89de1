"""One training step and what it touches: the :class:`Trainer`, :func:`train_step` and the
:class:`Meter` of the steps between two log lines.

There is one step for every run but DeepSpeed's (which steps inside ``backward``), and it
never makes the host wait for the device by itself: whether to skip a step (a non-finite
loss on any rank, or a non-finite gradient norm) is a 0-dim tensor, and losses, norms and
skip verdicts are read at log steps and checkpoints (:meth:`Meter.read`,
:func:`settle_skips`). The accelerator is the one train.py built; nothing here imports
accelerate.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from aeatrain.config.schema import Config
from aeatrain.data.manifest import DatasetManifest
from aeatrain.models import build_model
from aeatrain.run.folder import RunFolder
from aeatrain.training.ema import WeightEMA
from aeatrain.training.optim import learning_rate, pixel_loss, set_learning_rate, skip_next_step_if
from aeatrain.training.preemption import PreemptionFlag
from aeatrain.training.stability import SkippedSteps, restore_buffers, snapshot_buffers

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class Trainer:
    """Everything the loop touches; built once by ``train.build_trainer``."""

    cfg: Config
    accelerator: Accelerator
    model: nn.Module  # as prepared (DDP / DeepSpeed engine / plain)
    optimizer: torch.optim.Optimizer
    manifest: DatasetManifest
    run_folder: RunFolder
    batches: Iterator[dict]  # this rank's training stream, from the resumed step
    val_pairs: list[str]  # the pairs validation scores (aeatrain.protocol.scoring)
    ema: WeightEMA | None
    skipped: SkippedSteps
    step: int = 0
    preemption: PreemptionFlag = field(default_factory=PreemptionFlag)
    deepspeed: bool = False  # DeepSpeed steps inside accelerator.backward
    fused_adam: bool = False  # the optimizer skips a step on the device (see step_unless)
    # train_step's skip verdicts until settle_skips counts them, as (step, 0-dim bool)
    pending_skips: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    init_from: dict | None = None  # run.json's record of the weights the run started from

    def state_dict(self) -> dict:
        """The trainer's own counters; registered with accelerate's checkpointing, they are
        saved by ``save_state`` (custom_checkpoint_0.pkl) and restored by ``load_state``."""
        return {"step": self.step, "init_from": self.init_from, **self.skipped.state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.init_from = state["init_from"]
        limit = self.cfg.train.max_skipped_steps
        self.skipped = SkippedSteps(limit, state["skipped_steps"], state["consecutive_skipped"])

    @property
    def module(self) -> nn.Module:
        """The plain network under DDP/DeepSpeed/torch.compile wrappers."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def float32_copy(self, *, averaged: bool = False) -> nn.Module:
        """A fresh float32 network holding the live (or, ``averaged``, the EMA) weights.

        Built anew rather than deep-copied: the live module may carry DeepSpeed hooks and
        16-bit weights. Validation of EMA weights and the exported weight files use it.
        """
        fresh = build_model(self.cfg.model.name, **self.cfg.model.build_kwargs())
        fresh.load_state_dict(self.module.state_dict())
        fresh.to(self.accelerator.device)
        if averaged:
            self.ema.copy_to(fresh)
        return fresh


@dataclass
class StepOutcome:
    """One step's figures, left on the device: the host reads them at log steps
    (:meth:`Meter.read`) and :func:`settle_skips` counts the skips."""

    loss: torch.Tensor  # 0-dim; non-finite when the step was skipped for its loss
    grad_norm: torch.Tensor  # 0-dim; NaN where DeepSpeed had none to report
    skipped: torch.Tensor  # 0-dim bool, the same on every rank
    stop: bool  # every rank stops after this step (a preemption signal)


@dataclass
class Meter:
    """Figures of the steps since the last log line (validation and checkpoints excluded)."""

    steps: int = 0
    seconds: float = 0.0  # wall time of the steps: loading the batch + the optimizer step
    cpu_seconds: float = 0.0  # CPU time of this process (all its threads) in those steps
    outcomes: list[StepOutcome] = field(default_factory=list)
    pixels: int = 0  # HR pixels trained on by THIS process

    def add(self, outcome: StepOutcome, batch: dict, started: tuple[float, float]) -> None:
        """``started``: ``(time.perf_counter(), time.process_time())`` before the batch."""
        self.seconds += time.perf_counter() - started[0]
        self.cpu_seconds += time.process_time() - started[1]
        self.steps += 1
        self.outcomes.append(outcome)
        self.pixels += batch["hr"].numel()

    def read(self) -> tuple[float, float | None]:
        """(mean finite loss, last gradient norm of a step taken): the log step's one read
        of the device. The time it waits for the device is charged to these steps."""
        waited = time.perf_counter()
        losses = torch.stack([o.loss.float() for o in self.outcomes]).tolist()
        norms = torch.stack([o.grad_norm.float() for o in self.outcomes]).tolist()
        skipped = torch.stack([o.skipped for o in self.outcomes]).tolist()
        self.seconds += time.perf_counter() - waited
        finite = [loss for loss in losses if math.isfinite(loss)]
        mean = sum(finite) / len(finite) if finite else math.nan
        taken = [
            norm for norm, s in zip(norms, skipped, strict=True) if not s and math.isfinite(norm)
        ]
        return mean, taken[-1] if taken else None


def train_step(t: Trainer, batch: dict) -> StepOutcome:
    """One optimizer step without one read of the device by the host (but see
    :func:`step_unless` and :func:`deepspeed_step`). Whether to skip (a non-finite loss on any rank, or a non-finite
    gradient norm) stays a 0-dim tensor, the same on every rank: the optimizer leaves
    weights and moments untouched where it is true, BatchNorm's statistics and the EMA are
    selected on the device, and :func:`settle_skips` counts the verdicts at the next log
    step or checkpoint (a diverged run stops there, naming the steps; skipped steps change
    nothing meanwhile)."""
    accelerator = t.accelerator
    set_learning_rate(t.optimizer, learning_rate(t.step, t.cfg.optim, t.cfg.train.steps))
    lr, hr = to_device(t, batch)
    buffers = snapshot_buffers(t.module)
    with accelerator.autocast():
        prediction = t.model(lr)  # (B, 1, h, w)
    loss = pixel_loss(t.cfg.optim.loss)(prediction.float(), hr)
    if t.deepspeed:
        norm, skipped = deepspeed_step(t, loss)
    else:
        accelerator.backward(loss)
        max_norm = t.cfg.optim.grad_clip_norm or math.inf  # inf: measure only (scales by 1.0)
        norm = accelerator.clip_grad_norm_(t.model.parameters(), max_norm)  # (), unscaled
        bad = (~torch.isfinite(loss)).float() + (~torch.isfinite(norm)).float()
        skipped = accelerator.reduce(bad, reduction="sum") > 0  # (), the same on every rank
        step_unless(t, skipped)
    t.optimizer.zero_grad(set_to_none=True)
    restore_buffers(t.module, buffers, where=skipped)  # no NaN left in running statistics
    if t.ema is not None:
        t.ema.update(t.module, taken=~skipped)
    t.pending_skips.append((t.step, skipped))
    return StepOutcome(loss.detach(), norm.detach(), skipped, agreed_stop(t))


def step_unless(t: Trainer, skipped: torch.Tensor) -> None:
    """Step the optimizer unless ``skipped`` (0-dim bool on the device).

    Fused Adam skips on the device (:func:`skip_next_step_if`). fp16's loss scaler skips a
    step whose gradients overflowed, which are the steps with a non-finite norm, and
    lowers its scale; it reads the device itself (PyTorch's and accelerate's code). The
    default Adam has no such hook: the host reads ``skipped``, which costs nothing on the
    CPU, where it is the default (no queue of kernels to wait for).
    """
    if t.accelerator.scaler is not None:
        t.optimizer.step()
    elif t.fused_adam:
        skip_next_step_if(t.optimizer.optimizer, skipped)
        t.optimizer.step()
    elif not skipped:
        t.optimizer.step()


def deepspeed_step(t: Trainer, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient norm, skipped) of a DeepSpeed step. DeepSpeed clips (its config's
    gradient_clipping) and steps inside ``accelerator.backward``, with no hook to skip on
    the device: a non-finite loss on any rank is caught on the host before, and its step
    is not taken (nor does fp16's scaler see it)."""
    accelerator = t.accelerator
    bad = accelerator.reduce((~torch.isfinite(loss)).float(), reduction="sum")  # collective
    if bad > 0:
        return loss.new_tensor(math.nan), torch.tensor(True, device=loss.device)
    accelerator.backward(loss)
    norm = t.model.get_global_grad_norm()  # None when DeepSpeed has none to report
    norm = math.nan if norm is None else float(norm)
    skipped = accelerator.optimizer_step_was_skipped
    return loss.new_tensor(norm), torch.tensor(skipped, device=loss.device)


def agreed_stop(t: Trainer) -> bool:
    """Whether every rank stops after this step: one process acts on a preemption signal
    at once; several agree on it at log steps (a collective read)."""
    if t.accelerator.num_processes == 1:
        return t.preemption.requested
    if (t.step + 1) % t.cfg.logging.log_every != 0:
        return False
    flag = torch.tensor(float(t.preemption.requested), device=t.accelerator.device)
    return bool(t.accelerator.reduce(flag, reduction="sum") > 0)  # collective


def settle_skips(t: Trainer) -> None:
    """Count the steps' skip verdicts, in order (raises if the run diverged)."""
    if not t.pending_skips:
        return
    verdicts = torch.stack([skipped for _, skipped in t.pending_skips]).tolist()
    steps = [step for step, _ in t.pending_skips]
    t.pending_skips = []
    for step, skipped in zip(steps, verdicts, strict=True):
        t.skipped.record(step, skipped, "non-finite loss or gradients")


def to_device(t: Trainer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a loader batch to this process's device (the loader is never prepared)."""
    device = t.accelerator.device
    memory_format = torch.channels_last if t.cfg.train.channels_last else torch.contiguous_format
    # DeepSpeed keeps bf16/fp16 module weights and does not autocast: feed its dtype.
    dtype = next(t.module.parameters()).dtype
    lr = batch["lr"].to(device, dtype=dtype, memory_format=memory_format, non_blocking=True)
    hr = batch["hr"].to(device, non_blocking=True)  # (B, 1, h, w) float32
    return lr, hr


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
