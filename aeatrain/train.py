"""Train an AEANet or a baseline: ``accelerate launch aeatrain/train.py --config CONFIG``.

    accelerate launch [--config_file launch/deepspeed_zero2.yaml] aeatrain/train.py \\
        --config configs/aeanet.yaml [--section.key VALUE ...] [--resume]

(or ``python aeatrain/train.py ...`` for one process). The only module that builds the
``Accelerator``: topology, DDP/DeepSpeed and mixed precision come from the launch config;
everything else from the config tree (aeatrain/config/, docs/training.md). The loop reads
batch -> step (forward/backward -> clip -> optimizer, aeatrain/training/step.py) -> log ->
validate -> checkpoint; the checks before the first write are aeatrain/training/plan.py's.

Exit codes: 0 finished; 2 a user error, one line on stderr naming the file or key (bad
config or data, a run folder holding another run or another dataset's checkpoints, a run
folder in use by another trainer, a diverged run, a checkpoint that could not be
written); 75 (:data:`EXIT_PREEMPTED`) stopped by SIGUSR1/SIGTERM after writing a
checkpoint: run the same command with ``--resume`` to continue. ``accelerate launch`` and ``torchrun`` report
a failing worker with their own exit status, so the trainer also leaves
``RUN/preempted.json`` for a job script to test.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    broadcast,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm

from aeatrain.collective import span_global_batch
from aeatrain.config.load import load_config
from aeatrain.config.schema import Config
from aeatrain.data.streams import FullImage, TestTile
from aeatrain.errors import UserError, reporting_write_errors, run_cli
from aeatrain.malloc import keep_freed_memory
from aeatrain.models import shared_references
from aeatrain.protocol.scoring import score_pairs, summarize_pairs
from aeatrain.run import lock as runlock
from aeatrain.run.final import InitialWeights, load_into
from aeatrain.run.folder import ResumePoint, RunFolder, RunFolderError, dataset_record
from aeatrain.training.cpu_processes import relaunch_cpu_multiprocess
from aeatrain.training.ema import WeightEMA
from aeatrain.training.images import chosen_references, comparison_grid, reference_heatmaps
from aeatrain.training.optim import build_optimizer, learning_rate
from aeatrain.training.plan import (
    RunPlan,
    make_model,
    open_batches,
    plan_run,
    this_machines_device,
    validation_pairs,
)
from aeatrain.training.preemption import EXIT_PREEMPTED
from aeatrain.training.stability import SkippedSteps, TrainingDiverged, all_finite
from aeatrain.training.step import Meter, Trainer, peak_memory_mib, settle_skips, train_step

log = get_logger(__name__)


# ---------------------------------------------------------------------------- set-up


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="aeatrain/train.py",
        allow_abbrev=False,
        description="Train an AEANet (or a baseline) on a DATA folder; see docs/training.md.",
        epilog="Any config key can be overridden as --section.key VALUE (e.g. --train.steps 100).",
    )
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest intact checkpoint in train.run_dir, on data of the same "
        "dataset identity (= train.resume auto)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run every check training runs before its first write (config, data, run "
        "folder, lock, batch split, model) and print the plan; write nothing (for job scripts)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="with --check: the number of processes the run will have (default 1)",
    )
    return parser.parse_known_args(argv)


def make_accelerator(cfg: Config) -> Accelerator:
    """The accelerator; TensorBoard logs under RUN/logs. Creating it writes nothing."""
    handlers, deepspeed = [], None
    if _deepspeed_launched():
        deepspeed = DeepSpeedWithoutTransformers()  # the launch config's, read as accelerate does
        if not torch.cuda.is_available():
            # accelerate picks no backend for DeepSpeed without an accelerator; gloo runs on CPU.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    folder = RunFolder(cfg.train.run_dir)
    project = ProjectConfiguration(project_dir=str(folder.path), logging_dir=str(folder.logs))
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard",
        project_config=project,
        deepspeed_plugin=deepspeed,
        kwargs_handlers=handlers,
        dynamo_backend="inductor" if cfg.train.compile else None,
    )


def _deepspeed_launched() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


class DeepSpeedWithoutTransformers(DeepSpeedPlugin):
    """accelerate's DeepSpeed plugin, minus its hand-over to transformers.

    Selecting a plugin, accelerate 1.x imports transformers only to give the DeepSpeed
    config to transformers' ZeRO-3 model-init hook (``set_deepspeed_weakref``), and fails
    where transformers is not installed. aeatrain's models are not transformers models:
    there is nothing to hand over, with transformers installed or not.
    """

    def set_deepspeed_weakref(self) -> None:
        pass


def setup_logging(accelerator: Accelerator) -> None:
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------- acting


def build_trainer(cfg: Config, accelerator: Accelerator) -> tuple[Trainer, ResumePoint | None]:
    """:func:`plan_run` for this accelerator's processes and device, then act on it."""
    plan = plan_run(cfg, accelerator.num_processes, accelerator.device.type)
    return act(plan, accelerator), plan.resume


def act(plan: RunPlan, accelerator: Accelerator) -> Trainer:
    """Build what the plan checked; the first write is :func:`open_run_folder`'s."""
    cfg = plan.cfg
    batches = open_batches(
        cfg, plan.manifest, plan.local_batch, start_step=plan.start_step,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )  # fmt: skip
    set_seed(cfg.train.seed)
    model = build_network(cfg, accelerator.num_processes, plan.init)
    val_pairs = validation_pairs(cfg, plan.manifest)
    open_run_folder(plan.run_folder, cfg, accelerator)
    log.info(
        "%d process(es), %s, mixed precision %s, %d images per process per step",
        accelerator.num_processes, accelerator.distributed_type.value,
        accelerator.mixed_precision, plan.local_batch, main_process_only=True,
    )  # fmt: skip
    configure_deepspeed(cfg, accelerator, plan.local_batch)
    # float32 start, on the device accelerate is about to move the model to
    ema = WeightEMA(model, cfg.train.ema_decay, accelerator.device) if cfg.train.ema else None
    fused = use_fused_adam(cfg, accelerator)
    optimizer = build_optimizer(model.parameters(), cfg.optim, fused=fused)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.train.compile:
        log.info("torch.compile: training %s", type(model).__name__, main_process_only=True)
    trainer = Trainer(
        cfg, accelerator, model, optimizer, plan.manifest, plan.run_folder, batches, val_pairs,
        ema=ema, skipped=SkippedSteps(limit=cfg.train.max_skipped_steps),
        init_from=plan.init.record if plan.init else None,
        deepspeed=accelerator.distributed_type == DistributedType.DEEPSPEED, fused_adam=fused,
    )  # fmt: skip
    # save_state/load_state keep them: custom_checkpoint_0.pkl, _1.pkl (docs/training.md)
    accelerator.register_for_checkpointing(trainer, *([ema] if ema is not None else []))
    if plan.init is not None:
        log.info("weights from %s (optimizer fresh)", plan.init.source, main_process_only=True)
    return trainer


def build_network(cfg: Config, num_processes: int, init: InitialWeights | None) -> nn.Module:
    """``build_model`` from the model section, ``init``'s weights loaded into it if given,
    its batch-aware attention spanning every process's batch, plus the speed options of
    the train section."""
    model = make_model(cfg)
    span_global_batch(model)  # the batch-aware group is the GLOBAL batch (all processes)
    if init is not None:
        load_into(model, init.state, init.source)  # strict: every tensor, every shape
    if cfg.train.sync_batchnorm and num_processes > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def configure_deepspeed(cfg: Config, accelerator: Accelerator, local_batch: int) -> None:
    """DeepSpeed needs the batch sizes (we hand it no DataLoader) and takes clipping from us."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = local_batch
    config["train_batch_size"] = local_batch * accelerator.num_processes
    config["gradient_clipping"] = cfg.optim.grad_clip_norm or 0.0


def use_fused_adam(cfg: Config, accelerator: Accelerator) -> bool:
    """optim.fused, or where unset: on CUDA without DeepSpeed (which runs its own optimizer)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return False
    if cfg.optim.fused is not None:
        return cfg.optim.fused
    return accelerator.device.type == "cuda"


def open_run_folder(run_folder: RunFolder, cfg: Config, accelerator: Accelerator) -> None:
    """Main process: create and lock RUN, save the resolved config; trackers on every rank."""
    accelerator.wait_for_everyone()  # every rank's plan has read RUN before it changes
    refusal = None
    if accelerator.is_main_process:
        try:
            run_folder.open(cfg.to_yaml())
        except runlock.RunLockedError as err:  # another trainer took it since the plan
            refusal = str(err)
    refusal = broadcast_object_list([refusal])[0]  # collective: every rank stops, none waits
    if refusal is not None:
        raise runlock.RunLockedError(refusal)
    accelerator.wait_for_everyone()
    with reporting_write_errors(run_folder.logs):  # TensorBoard's first event file
        accelerator.init_trackers("tensorboard")


def restore(t: Trainer, resume: ResumePoint) -> None:
    """Every rank: weights, optimizer, loss scaler, RNG states and the registered objects
    (the trainer's counters, the EMA): all of it is accelerate's ``load_state``."""
    checkpoint = resume.checkpoint
    try:
        t.accelerator.load_state(str(checkpoint))
    except (OSError, EOFError, RuntimeError) as err:  # files checked, yet unreadable
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunFolderError(f"{checkpoint}: cannot be resumed ({first_line})") from None
    if t.step != resume.step:  # the loader was opened at trainer_state.json's step
        raise RuntimeError(f"{checkpoint}: holds step {t.step}, trainer_state.json {resume.step}")
    if resume.world_size != t.accelerator.num_processes:
        log.warning(
            "%s was written by %d processes, resuming on %d: the crops of each step differ "
            "from the uninterrupted run's", checkpoint, resume.world_size,
            t.accelerator.num_processes,
        )  # fmt: skip
    log.info("resumed from %s at step %d", checkpoint, t.step, main_process_only=True)


# ---------------------------------------------------------------------------- the loop


def train(t: Trainer) -> int:
    """batch -> forward/backward -> clip -> step -> log -> validate -> checkpoint."""
    cfg, accelerator = t.cfg, t.accelerator
    bar = tqdm(
        total=cfg.train.steps, initial=t.step, unit="step", dynamic_ncols=True,
        disable=not (accelerator.is_main_process and cfg.logging.progress_bar),
    )  # fmt: skip
    meter = Meter()
    try:
        while t.step < cfg.train.steps:
            started = (time.perf_counter(), time.process_time())
            batch = next(t.batches)
            if batch["step"] != t.step:
                raise RuntimeError(f"loader gave step {batch['step']} at step {t.step}")
            outcome = train_step(t, batch)
            t.step += 1
            meter.add(outcome, batch, started)
            bar.update(1)
            if t.step % cfg.logging.log_every == 0:
                log_train(t, meter, bar)
                meter = Meter()
            if t.step % cfg.logging.eval_every == 0 and not outcome.stop:
                validate(t)
            if outcome.stop:
                return stop_for_preemption(t)
            if t.step % cfg.train.checkpoint_every == 0:
                save_checkpoint(t)
    finally:
        bar.close()
        close_stream = getattr(t.batches, "close", None)
        if close_stream is not None:
            close_stream()  # stops and joins the loader's worker threads before exit
    finish(t)
    return 0


def log_train(t: Trainer, meter: Meter, bar: tqdm) -> None:
    """Train and speed scalars to TensorBoard; the loss is averaged over ranks (collective)."""
    accelerator = t.accelerator
    settle_skips(t)
    local, grad_norm = meter.read()
    loss = accelerator.reduce(torch.tensor(local, device=accelerator.device), "mean").item()
    seconds = meter.seconds / meter.steps
    cpu_seconds = meter.cpu_seconds / meter.steps
    processes = accelerator.num_processes
    values = {
        "train/loss": loss,
        "train/learning_rate": learning_rate(t.step - 1, t.cfg.optim, t.cfg.train.steps),
        "train/grad_norm": grad_norm,
        "train/skipped_steps": t.skipped.total,
        "perf/step_seconds": seconds,
        "perf/cpu_seconds_per_step": cpu_seconds,  # main process; robust on a shared CPU
        "perf/samples_per_second": t.cfg.data.global_batch_size / seconds,
        "perf/megapixels_per_second": meter.pixels * processes / meter.steps / seconds / 1e6,
        "perf/peak_memory_mib": peak_memory_mib(accelerator.device),
    }
    values = {key: value for key, value in values.items() if value is not None}
    accelerator.log(values, step=t.step)
    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    log.info(
        "step %d: loss %.5f, learning rate %.3g, grad norm %s, %.3f s/step, skipped %d",
        t.step, loss, values["train/learning_rate"], values.get("train/grad_norm", "n/a"), seconds,
        t.skipped.total, main_process_only=True,
    )  # fmt: skip


# ---------------------------------------------------------------------------- validation


def validate(t: Trainer) -> None:
    """Score the raw weights (val/*) and, with EMA, the average (val_ema/*) by the protocol
    of ``aeatrain.evaluate``: the same figures it reports for these weights."""
    share_main_buffers(t)
    t.module.eval()
    try:
        log_validation(t, t.module, "val")
        if t.ema is not None:
            log_validation(t, t.float32_copy(averaged=True), "val_ema")
    finally:
        t.module.train()


def share_main_buffers(t: Trainer) -> None:
    """Every rank takes the main process's buffers (BatchNorm's running statistics), a
    collective. Each rank updated its own copy with its own batch at the last step (DDP
    broadcasts the main process's only at the start of the next forward; DeepSpeed keeps
    each rank's), but the saved weights, and so ``aeatrain.evaluate``, are the main
    process's. Training is unchanged: train mode does not use the running statistics,
    and DDP would overwrite them with the same values at the next step (measured: the
    same final weights with and without this)."""
    if t.accelerator.num_processes > 1:
        broadcast(list(t.module.buffers()), from_process=0)  # in place


VAL_FIGURES = ("dpsnr", "dssim", "psnr", "ssim", "input_psnr", "input_ssim")


def log_validation(t: Trainer, model: nn.Module, prefix: str) -> None:
    """Every rank predicts its share of the whole images (image i to rank i % world) with
    ``aeatrain.protocol.scoring.score_pairs``; the gathered scores are averaged as evaluate's
    table is (tiles, then pairs) and logged by the main process."""
    accelerator = t.accelerator
    shown = ShownTiles(t.cfg.logging.image_tiles if accelerator.is_main_process else 0)
    # collective: every rank scores its share and receives every rank's
    scores = score_pairs(
        model, t.manifest, pairs=t.val_pairs, rank=accelerator.process_index,
        world_size=accelerator.num_processes, gather=lambda share: gather_object([share]),
        cache_dir=t.cfg.data.cache_dir, on_prediction=shown.add,
    )  # fmt: skip
    if not accelerator.is_main_process:
        return
    summary = summarize_pairs(scores)
    values = {f"{prefix}/{key}": summary[key] for key in VAL_FIGURES}
    values[f"{prefix}/pairs"] = len(scores)
    values[f"{prefix}/tiles"] = sum(len(tiles) for tiles in scores.values())
    accelerator.log(values, step=t.step)
    log.info(
        "step %d %s: dPSNR %.3f dB, dSSIM %.4f on %d pairs (whole images)", t.step, prefix,
        summary["dpsnr"], summary["dssim"], len(scores), main_process_only=True,
    )  # fmt: skip
    log_pictures(t, model, prefix, shown.tiles)


@dataclass
class ShownTiles:
    """The first ``limit`` test tiles this process predicted, with their predictions cut
    from the whole-image ones, for :func:`log_pictures` (no second forward pass)."""

    limit: int
    tiles: list[tuple[TestTile, np.ndarray]] = field(default_factory=list)

    def add(self, image: FullImage, member: int, tiling: int, prediction: np.ndarray) -> None:
        for tile_id in sorted(image.test_regions):
            if len(self.tiles) >= self.limit:
                return
            tile = image.test_tile(tile_id)
            self.tiles.append((tile, prediction[tile.region.window]))


def log_pictures(t: Trainer, model: nn.Module, prefix: str, shown: list) -> None:
    """Main process: LR | prediction | HR grids of the shown tiles and, for a model with
    shared references (aeanet), their reference heatmaps."""
    writer = t.accelerator.get_tracker("tensorboard", unwrap=True)
    refs = chosen_references(shared_references(model), t.cfg.logging.heatmap_refs)
    for tile, prediction in shown:
        name = f"{tile.pair}/{tile.tile_id}"
        grid = comparison_grid(tile, prediction)  # (1, H, 3W + gaps)
        writer.add_image(f"{prefix}_images/{name}", grid, t.step, dataformats="CHW")
        if refs:
            maps = reference_heatmaps(model, tile, refs)  # (3, H, (1 + len(refs)) W + gaps)
            writer.add_image(f"{prefix}_heatmaps/{name}", maps, t.step, dataformats="CHW")


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(t: Trainer) -> Path:
    """Every rank saves into RUN/checkpoints/.step_N.partial; main then renames it step_N.

    ``save_state`` holds everything resumable, the registered trainer counters and EMA
    included; the main process then adds ``trainer_state.json`` (:func:`checkpoint_record`).
    """
    accelerator, folder = t.accelerator, t.run_folder
    settle_skips(t)
    if not all_finite(t.module):
        raise TrainingDiverged(
            f"weights are not finite after step {t.step}: no checkpoint written; the newest "
            f"complete one is {folder.newest_complete()}"
        )
    try:
        if accelerator.is_main_process:
            folder.begin_checkpoint(t.step)
        accelerator.wait_for_everyone()
        # collective under DeepSpeed: every rank writes
        accelerator.save_state(str(folder.partial_checkpoint(t.step)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            keep = t.cfg.train.keep_checkpoints
            folder.complete_checkpoint(t.step, checkpoint_record(t), keep)
    except (OSError, RuntimeError) as err:  # the rank that fails exits; torchrun then stops
        failed = folder.failed_checkpoint(t.step, err, remove=accelerator.is_main_process)
        if failed is None:
            raise  # not a failed write: a bug
        raise failed from None
    log.info("checkpoint %s", folder.checkpoint(t.step), main_process_only=True)
    accelerator.wait_for_everyone()
    return folder.checkpoint(t.step)


def checkpoint_record(t: Trainer) -> dict:
    """What ``trainer_state.json`` says, read before anything is loaded (the plan)."""
    return {
        "data_position": t.step,  # the loader's batch index = the step (pure function of it)
        "world_size": t.accelerator.num_processes,
        "seed": t.cfg.train.seed,
        "dataset": dataset_record(t.manifest),
    }


def stop_for_preemption(t: Trainer) -> int:
    """Checkpoint at this step, leave RUN/preempted.json, return :data:`EXIT_PREEMPTED`."""
    path = save_checkpoint(t)
    if t.accelerator.is_main_process:
        # signal: None when only another rank received it
        t.run_folder.mark_preempted(t.step, path, EXIT_PREEMPTED, t.preemption.received)
    # No rank leaves before the marker exists: a launcher that kills the other processes
    # when one exits (srun --kill-on-bad-exit) would otherwise cut the main one short.
    t.accelerator.wait_for_everyone()
    log.warning(
        "preempted: process %d of %d: checkpoint %s written; exiting with %d (resume with "
        "--resume)", t.accelerator.process_index, t.accelerator.num_processes, path,
        EXIT_PREEMPTED, main_process_only=False,
    )  # fmt: skip
    return EXIT_PREEMPTED


def finish(t: Trainer) -> None:
    """Last checkpoint and validation, then RUN/model.safetensors, config.yaml, run.json."""
    accelerator = t.accelerator
    if t.run_folder.newest_complete() != t.run_folder.checkpoint(t.step):
        save_checkpoint(t)
    if t.step % t.cfg.logging.eval_every != 0:
        validate(t)
    raw = t.float32_copy()
    averaged = t.float32_copy(averaged=True) if t.ema is not None else None
    if accelerator.is_main_process:
        t.run_folder.write_final(
            model=raw, ema_model=averaged, model_name=t.cfg.model.name,
            model_kwargs=t.cfg.model.build_kwargs(), manifest=t.manifest, step=t.step,
            config_yaml=t.cfg.to_yaml(), init_from=t.init_from,
        )  # fmt: skip
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    relaunch_cpu_multiprocess(__file__, argv)  # `accelerate launch --cpu` starts only one
    args, overrides = parse_args(argv)
    cfg = load_config(args.config, overrides)
    if args.resume:
        cfg.train.resume = "auto"
    if args.check:
        if args.processes < 1:
            raise UserError(f"--processes {args.processes}: must be at least 1")
        plan = plan_run(
            cfg, args.processes, this_machines_device(), verify_checksums=cfg.data.verify
        )
        print(plan.summary())
        return 0
    accelerator = make_accelerator(cfg)
    setup_logging(accelerator)
    try:
        return build_and_train(cfg, accelerator)
    finally:
        if accelerator.is_main_process:
            RunFolder(cfg.train.run_dir).release_lock()  # only this process's own lock


def build_and_train(cfg: Config, accelerator: Accelerator) -> int:
    trainer, resume_from = build_trainer(cfg, accelerator)
    trainer.preemption.install()  # a signal during the restore is acted on at the first step
    try:
        if resume_from is not None:
            restore(trainer, resume_from)
        return train(trainer)
    finally:
        trainer.preemption.restore()
        accelerator.end_training()  # flush TensorBoard, also when a run stops on an error


if __name__ == "__main__":
    keep_freed_memory()  # CPU: 1.7-3x faster steps, see aeatrain/malloc.py
    run_cli(main)
