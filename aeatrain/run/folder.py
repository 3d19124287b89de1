"""RUN/, the folder of one training run: the one module that knows its layout and rules.

    RUN/config.yaml                the resolved config (written when the run starts, again
                                   with the final files)
    RUN/trainer.lock               the live trainer (aeatrain/run/lock.py)
    RUN/checkpoints/step_N/        complete checkpoints; .step_N.partial while one is
                                   written (aeatrain/run/checkpoint.py)
    RUN/preempted.json             left when the run stopped on a preemption signal
    RUN/logs/tensorboard/          TensorBoard events (written by accelerate's tracker)
    RUN/model.safetensors, RUN/model_ema.safetensors, RUN/run.json
                                   the final files (aeatrain/run/final.py, docs/formats.md)

The trainer (aeatrain/train.py) asks in two phases. Reading, which writes nothing and is
what ``train.py --check`` runs: :meth:`RunFolder.resume_point` applies the same-run
policy (a folder holding another run, another config or another dataset is refused;
the newest intact checkpoint is chosen) and :meth:`RunFolder.check_unlocked` refuses a
folder another live trainer holds. Writing, on the main process only: :meth:`open`,
the checkpoint steps, :meth:`mark_preempted`, :meth:`write_final`. Collectives
(``save_state`` on every rank, barriers) stay with the trainer: this module knows files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aeatrain.config.load import read_saved_config
from aeatrain.config.schema import Config
from aeatrain.data.manifest import dataset_identity
from aeatrain.errors import UserError
from aeatrain.files.atomic import atomic_write_text
from aeatrain.run import checkpoint as ckpt
from aeatrain.run import lock as runlock
from aeatrain.run.final import CONFIG_YAML, write_run_files

if TYPE_CHECKING:  # annotations only
    from torch import nn

    from aeatrain.data.manifest import DatasetManifest

log = logging.getLogger(__name__)

PREEMPTED_MARKER = "preempted.json"
# Keys that may differ when a run is resumed; any other change is refused (it would not be
# the same run any more). logging.* may always change. data.root may move (node-local
# scratch): the checkpoint's dataset identity is compared instead.
RESUMABLE_CHANGES = {
    "train.steps", "train.resume", "train.run_dir", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_skipped_steps", "data.num_workers", "data.root",
    "data.cache_dir", "data.verify",
}  # fmt: skip


class RunFolderError(UserError):
    """A run folder that cannot be (re)used as asked; the message names the folder."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, quota, read-only); the older ones stay."""


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resumed run continues from, as its ``trainer_state.json`` says."""

    checkpoint: Path
    step: int
    world_size: int


def dataset_record(manifest: DatasetManifest) -> dict:
    """What a checkpoint and run.json say about the data trained on."""
    return {
        "identity": dataset_identity(manifest),
        "path": str(manifest.root),
        "manifest_sha256": manifest.sha256,
    }


class RunFolder:
    """``train.run_dir``: see the module docstring for its files and the two phases."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def logs(self) -> Path:
        """Where accelerate's TensorBoard tracker writes (``RUN/logs/tensorboard``)."""
        return self.path / "logs"

    # ------------------------------------------------------------ reading (the plan)

    def resume_point(self, cfg: Config, manifest: DatasetManifest) -> ResumePoint | None:
        """Refuse a folder holding another run; the checkpoint to resume from, if any."""
        if not self.path.exists():
            self._check_creatable()
            return None
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: train.run_dir exists and is not a folder")
        saved = self.path / CONFIG_YAML
        if not saved.is_file():
            if any(self.path.iterdir()):
                raise RunFolderError(
                    f"{self.path}: not empty and holds no aeatrain run ({CONFIG_YAML} missing); "
                    f"choose another train.run_dir"
                )
            return None
        if cfg.train.resume != "auto":
            raise RunFolderError(
                f"{self.path}: holds a run already ({CONFIG_YAML}); pass --resume to continue "
                f"it or choose another train.run_dir"
            )
        _check_same_run(saved, cfg)
        checkpoint = self._newest_resumable()
        if checkpoint is None:
            return None
        state = ckpt.read_trainer_state(checkpoint)
        _check_same_dataset(checkpoint, state, manifest)
        if state["step"] > cfg.train.steps:
            raise RunFolderError(
                f"{checkpoint}: the run is at step {state['step']}, past train.steps="
                f"{cfg.train.steps}; resume with train.steps of at least {state['step']} "
                f"(weights are never taken back to an earlier step)"
            )
        return ResumePoint(checkpoint, state["step"], state["world_size"])

    def _check_creatable(self) -> None:
        """The nearest existing folder above RUN is a folder this process may write in."""
        parent = self.path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise RunFolderError(
                f"{self.path}: train.run_dir cannot be created, {parent} is not a folder"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunFolderError(
                f"{self.path}: train.run_dir cannot be created, {parent} is not writable"
            )

    def _newest_resumable(self) -> Path | None:
        """The newest intact checkpoint; a broken newer one is named in a warning and
        skipped; checkpoints of an older trainer-state version are refused."""
        newest = ckpt.newest_complete(self.path)
        version = None if newest is None else ckpt.state_version(newest)
        if version is not None and version < ckpt.STATE_VERSION:
            raise RunFolderError(
                f"{newest}: written by an older aeatrain (trainer state version {version}, "
                f"with EMA and step counters outside accelerate's checkpoint); this one "
                f"resumes version {ckpt.STATE_VERSION} only: finish the run with the aeatrain "
                f"that started it, or choose another train.run_dir"
            )
        checkpoint, broken = ckpt.newest_intact(self.path)
        for folder, problem in broken:
            log.warning("%s: %s; not resuming from it", folder, problem)
        if broken and checkpoint is None:
            folder, problem = broken[0]
            raise RunFolderError(
                f"{folder}: {problem}, and no older checkpoint is intact; restore the file or "
                f"choose another train.run_dir"
            )
        if broken:
            log.warning("resuming from the older %s instead", checkpoint)
        return checkpoint

    def check_unlocked(self) -> None:
        """Refuse a folder in use by another live trainer (``RUN/trainer.lock``)."""
        runlock.check_unlocked(self.path)

    # ------------------------------------------------------------ writing (main process)

    def open(self, config_yaml: str) -> None:
        """Create and lock RUN, save the resolved config, drop an old preemption marker.

        The lock comes first: a folder another trainer took since the plan stays as it was
        (:class:`aeatrain.run.lock.RunLockedError`).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        runlock.acquire(self.path)  # held by the main process for the whole run
        atomic_write_text(self.path / CONFIG_YAML, config_yaml, overwrite=True)
        (self.path / PREEMPTED_MARKER).unlink(missing_ok=True)

    def release_lock(self) -> None:
        """Remove ``RUN/trainer.lock`` if this process holds it (never another's)."""
        runlock.release(self.path)

    def checkpoint(self, step: int) -> Path:
        """Where the complete checkpoint of ``step`` lives (or will)."""
        return ckpt.checkpoint_path(self.path, step)

    def partial_checkpoint(self, step: int) -> Path:
        """The folder every rank saves ``step`` into before it is complete."""
        return ckpt.partial_path(self.path, step)

    def newest_complete(self) -> Path | None:
        return ckpt.newest_complete(self.path)

    def begin_checkpoint(self, step: int) -> Path:
        """An empty ``.step_N.partial`` (debris of a crash removed)."""
        return ckpt.start_partial(self.path, step)

    def complete_checkpoint(self, step: int, record: dict, keep: int) -> Path:
        """After every rank has saved: write ``trainer_state.json``, rename the folder to
        ``step_N``, then keep the newest ``keep`` checkpoints and remove debris."""
        final = ckpt.finish_partial(self.path, step, record)
        ckpt.prune(self.path, keep)
        return final

    def failed_checkpoint(
        self, step: int, err: Exception, *, remove: bool
    ) -> CheckpointWriteError | None:
        """The error of a checkpoint that could not be written (a full disk, quota,
        read-only: an OSError, or torch.save's RuntimeError); ``remove`` (the main process)
        deletes its partial folder, so the newest complete one stays the newest. None when
        ``err`` is not a failed write: a bug, to raise as it is."""
        partial = self.partial_checkpoint(step)
        problem = ckpt.write_failure(err, partial)
        if problem is None:
            return None
        if remove:
            shutil.rmtree(partial, ignore_errors=True)
        return CheckpointWriteError(
            f"{partial}: could not write the checkpoint of step {step} "
            f"({problem}); removed it, the newest complete checkpoint is still "
            f"{self.newest_complete()}"
        )

    def mark_preempted(self, step: int, checkpoint: Path, exit_code: int, signal: int | None):
        """``RUN/preempted.json``: a job script tests for it to requeue the job."""
        marker = {"step": step, "checkpoint": str(checkpoint), "exit_code": exit_code,
                  "signal": signal}  # fmt: skip
        atomic_write_text(self.path / PREEMPTED_MARKER, json.dumps(marker) + "\n", overwrite=True)

    def write_final(
        self,
        *,
        model: nn.Module,
        ema_model: nn.Module | None,
        model_name: str,
        model_kwargs: dict,
        manifest: DatasetManifest,
        step: int,
        config_yaml: str,
        init_from: dict | None,
    ) -> None:
        """RUN/model.safetensors (+ model_ema.safetensors), config.yaml, run.json last."""
        try:
            write_run_files(
                self.path, model=model, model_name=model_name, model_kwargs=model_kwargs,
                scale=manifest.scale, bit_depths=manifest.bit_depths,
                dataset=dataset_record(manifest), step=step, config_yaml=config_yaml,
                ema_model=ema_model, init_from=init_from,
            )  # fmt: skip
        except OSError as err:  # each file is written atomically: none is half there
            raise CheckpointWriteError(
                f"{self.path}: could not write the final weights and run.json "
                f"({err.strerror or err}); the checkpoint of step {step} is complete, so "
                f"run the same command with --resume once there is space"
            ) from None


def _check_same_run(saved_path: Path, cfg: Config) -> None:
    """Refuse a change of anything but :data:`RESUMABLE_CHANGES` against RUN/config.yaml."""
    saved = read_saved_config(saved_path)
    current = cfg.model_dump(mode="json")
    for section, values in current.items():
        if section == "logging":
            continue
        for key, value in values.items():
            dotted = f"{section}.{key}"
            old = (saved.get(section) or {}).get(key)
            if dotted not in RESUMABLE_CHANGES and old != value:
                raise RunFolderError(
                    f"{saved_path}: the run was started with {dotted}={old!r}; resuming with "
                    f"{value!r} would make it another run (choose another train.run_dir)"
                )


def _check_same_dataset(checkpoint: Path, state: dict, manifest: DatasetManifest) -> None:
    """Resume only on the dataset the checkpoint was trained on, wherever it lies now."""
    recorded = state["dataset"]
    identity = dataset_identity(manifest)
    if recorded["identity"] != identity:
        raise RunFolderError(
            f"{manifest.path}: another dataset (identity {identity[:12]}) than the one "
            f"{checkpoint} was trained on ({recorded['identity'][:12]}, then at "
            f"{recorded['path']}); resume with that data or choose another train.run_dir"
        )
