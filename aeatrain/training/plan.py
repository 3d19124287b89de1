"""The plan of a training run: every check a user's mistake can fail, made before the first
write (``train.py --check`` runs exactly :func:`plan_run`), and the streams it opens.

Nothing here knows about the accelerator: a plan takes the number of processes and the
device type, so that ``--check`` plans for a launch that has not happened yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from pydantic import ValidationError
from torch import nn

from aeatrain.config.load import ConfigError
from aeatrain.config.schema import Config, ModelConfig
from aeatrain.data.loader import train_loader
from aeatrain.data.manifest import DatasetManifest, load_manifest
from aeatrain.models import build_model, input_multiple, model_spec
from aeatrain.modelzoo.read import read_initial_weights
from aeatrain.run.final import InitialWeights, load_into
from aeatrain.run.folder import ResumePoint, RunFolder


def per_device_batch(cfg: Config, num_processes: int) -> int:
    """The global batch split over the processes; refuses what cannot train as configured."""
    batch, name = cfg.data.global_batch_size, "data.global_batch_size"
    if batch % num_processes:
        raise ConfigError(f"{name}={batch} does not divide over {num_processes} processes")
    local = batch // num_processes
    if model_spec(cfg.model.name).batch_aware and cfg.model.batch_aware and local < 2:
        raise ConfigError(
            f"{name}={batch} gives {local} image per process, but model.batch_aware needs at "
            f"least 2 (the first half of each process's batch trains the batch-aware "
            f"branch, the second the references; with 1 the references get no gradient)"
        )
    return local


def make_model(cfg: Config) -> nn.Module:
    """``build_model`` from the model section; a bad combination is the user's error."""
    try:
        return build_model(cfg.model.name, **cfg.model.build_kwargs())
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def initial_weights(cfg: Config) -> InitialWeights | None:
    """``train.init_from`` read and checked against the model section (None when unset)."""
    if cfg.train.init_from is None:
        return None
    source = read_initial_weights(cfg.train.init_from)
    here = {"name": cfg.model.name, **cfg.model.build_kwargs()}
    try:  # the source's model section, defaults filled in as this aeatrain fills them
        theirs = ModelConfig(name=source.model_name, **source.model_kwargs)
    except ValidationError:
        raise ConfigError(
            f"train.init_from {source.source}: its model {source.model_name!r} "
            f"{source.model_kwargs} is not one this aeatrain builds"
        ) from None
    there = {"name": theirs.name, **theirs.build_kwargs()}
    different = [key for key in here if here[key] != there[key]]
    if different:
        key = different[0]
        raise ConfigError(
            f"train.init_from {source.source}: model.{key} is {there[key]!r} there and "
            f"{here[key]!r} here; a run starts only from the weights of the same model "
            f"(set the model section to the source's)"
        )
    return source


@dataclass(frozen=True)
class RunPlan:
    """A run every check has passed: what :func:`plan_run` found, nothing written yet."""

    cfg: Config
    num_processes: int
    local_batch: int
    manifest: DatasetManifest
    run_folder: RunFolder
    resume: ResumePoint | None  # None: the run starts at step 0
    init: InitialWeights | None  # train.init_from's weights, for a run that starts

    @property
    def start_step(self) -> int:
        return self.resume.step if self.resume else 0

    def summary(self) -> str:
        """The line ``--check`` prints."""
        cfg, manifest = self.cfg, self.manifest
        start = f"resumes from {self.resume.checkpoint}" if self.resume else "starts at step 0"
        if self.init is not None:
            start += f" from the weights of {self.init.source}"
        return (
            f"check: ok: {cfg.model.name} on {len(cfg.data.pairs or manifest.pair_names)} "
            f"pair(s) of {manifest.root}, {self.num_processes} process(es) x "
            f"{self.local_batch} images, {cfg.train.steps} steps into {cfg.train.run_dir} "
            f"({start})"
        )


def plan_run(
    cfg: Config, num_processes: int, device_type: str, *, verify_checksums: bool = False
) -> RunPlan:
    """Every check a user's mistake can fail, in one place and writing nothing: the batch
    split, the device options, the data, the run folder (same run, same dataset, intact
    checkpoint), the lock, the loader's pairs and crop, the model and ``train.init_from``.

    ``train.py --check`` runs exactly this and prints :meth:`RunPlan.summary`; training
    runs it on every rank, then ``train.build_trainer`` acts on it. ``verify_checksums``
    (``--check`` with ``data.verify``) also hashes every shard; training never does.
    """
    local_batch = per_device_batch(cfg, num_processes)
    check_device_options(cfg, num_processes, device_type)
    manifest = load_manifest(cfg.data.root, verify_checksums=verify_checksums)
    run_folder = RunFolder(cfg.train.run_dir)
    resume = run_folder.resume_point(cfg, manifest)
    run_folder.check_unlocked()
    check_batches(cfg, manifest, local_batch, resume.step if resume else 0)
    # A resumed run has its weights (and its init_from record) in the checkpoint.
    init = initial_weights(cfg) if resume is None else None
    check_model(cfg, init)
    return RunPlan(cfg, num_processes, local_batch, manifest, run_folder, resume, init)


def check_device_options(cfg: Config, num_processes: int, device_type: str) -> None:
    """Options that need a kind of device: PyTorch's SyncBatchNorm needs GPUs."""
    if cfg.train.sync_batchnorm and num_processes > 1 and device_type != "cuda":
        raise ConfigError(
            f"train.sync_batchnorm: PyTorch's SyncBatchNorm needs GPUs; this run is on "
            f"{device_type}"
        )


def check_batches(cfg: Config, manifest: DatasetManifest, local_batch: int, step: int) -> None:
    """Open the training stream once, which checks the pair names and the crop size
    against the data; nothing is decoded or staged (the shard indexes it reads stay cached
    in ``manifest`` for the stream ``train.act`` opens)."""
    open_batches(cfg, manifest, local_batch, start_step=step).close()


def check_model(cfg: Config, init: InitialWeights | None) -> None:
    """The model section builds, and ``init``'s tensors fit it (every name and shape)."""
    model = make_model(cfg)
    if init is not None:
        load_into(model, init.state, init.source)


def this_machines_device() -> str:
    """The device type ``--check`` plans for: the one accelerate would pick here."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true"
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def open_batches(
    cfg: Config,
    manifest: DatasetManifest,
    local_batch: int,
    *,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
):
    """A rank's endless batch stream from ``start_step``. Opening it checks the pair names
    and the crop size against the data; nothing is decoded before the first batch."""
    return train_loader(
        manifest,
        crop_size=None if cfg.data.crop_size == "full" else cfg.data.crop_size,
        batch_size=local_batch,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
        augment=cfg.data.augment,
        pairs=cfg.data.pairs,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.data.cache_dir,
        pin_memory=torch.cuda.is_available(),  # page-locked: copies to the GPU overlap compute
        input_multiple=input_multiple(cfg.model.name),
    )


def validation_pairs(cfg: Config, manifest: DatasetManifest) -> list[str]:
    """The pairs validation scores: those trained on (``data.pairs``, else all), as
    ``aeatrain.evaluate`` scores the run, the first ``logging.eval_max_pairs`` in
    pair-name order. Pair names were checked when the batches were opened."""
    pairs = sorted(cfg.data.pairs) if cfg.data.pairs else list(manifest.pair_names)
    return pairs[: cfg.logging.eval_max_pairs]
