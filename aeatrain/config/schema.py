"""What config.yaml may hold: the one typed config tree of a training run.

Five sections, each a pydantic model with ``extra="forbid"`` so a misspelt key is an error
rather than a silently ignored setting: ``model`` (what :func:`aeatrain.models.build_model`
builds), ``data`` (what the loader reads), ``optim`` (Adam, the staircase schedule, the loss,
clipping), ``train`` (steps, run folder, checkpoints, precision, EMA, speed options) and
``logging`` (TensorBoard cadence, validation, images). Every field carries a description:
docs/training.md is generated from them (``python -m aeatrain.config.docs docs/training.md``)
and a test keeps it current. :mod:`aeatrain.config.load` reads a file and overrides into it.

The defaults are the paper-faithful values of docs/method.md section 4; improvements (EMA,
bf16, full-resolution crops, ...) are options switched on by their own configs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aeatrain.errors import MAX_SEED
from aeatrain.models import DEFAULT_MODEL, DEFAULTS, MODELS, trainable_names

SECTIONS = ("model", "data", "optim", "train", "logging")


class _Section(BaseModel):
    # nan/inf pass every range check (nan compares false, inf is > 0): refuse them outright
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _input_multiples() -> str:
    """``4 for unet, gvtnet, aeanet; 1 for vdsr, edsr, rcan``, from ``MODELS``."""
    by_multiple: dict[int, list[str]] = {}
    for name in trainable_names():
        by_multiple.setdefault(MODELS[name].input_multiple, []).append(name)
    return "; ".join(f"{m} for {', '.join(names)}" for m, names in by_multiple.items())


class ModelConfig(_Section):
    """Which network to build; every field but ``name`` is a keyword of ``build_model``."""

    name: str = Field(
        DEFAULT_MODEL,
        description="Network, one of the trainable models of `aeatrain.models.MODELS`: "
        + "; ".join(f"`{name}`: {MODELS[name].summary}" for name in trainable_names())
        + ". Options that do not apply to the chosen network must keep their defaults.",
    )
    base_channels: int = Field(
        DEFAULTS["base_channels"], ge=1, description="Channels of the first level (32, 64, 128)."
    )
    heads: int = Field(DEFAULTS["heads"], ge=1, description="Attention heads (aeanet, gvtnet).")
    num_refs: int = Field(
        DEFAULTS["num_refs"],
        ge=0,
        description="Shared learned references of aeanet (paper 64; ablations 16, 32; 0 = "
        "batch-aware branch only).",
    )
    batch_aware: bool = Field(
        DEFAULTS["batch_aware"],
        description="aeanet: send the first half of each per-device batch through the "
        "batch-aware branch, whose keys/values span the GLOBAL batch (all processes). "
        "False = references only (ablation).",
    )
    normalize: Literal["linear", "softmax"] = Field(
        DEFAULTS["normalize"],
        description="Attention normalisation: `linear` divides by the number of keys (the "
        "paper's Eq. 2, linear in the token count); `softmax` is the usual softmax.",
    )
    bn_momentum: float = Field(
        DEFAULTS["bn_momentum"],
        gt=0,
        le=1,
        description="BatchNorm momentum in PyTorch's convention (paper 0.003 = TensorFlow's "
        "0.997). With 0.003 the running statistics need thousands of steps to settle: "
        "short runs (debug, demo) must use a larger value such as 0.1, or evaluation in "
        "eval mode uses unsettled statistics and scores garbage.",
    )
    bn_eps: float = Field(DEFAULTS["bn_eps"], gt=0, description="BatchNorm epsilon.")
    residual: bool = Field(
        DEFAULTS["residual"],
        description="Add the input image to the network's output (predict the residual). "
        "Off in the published network; also for edsr and rcan (vdsr always adds it).",
    )
    width: int = Field(
        DEFAULTS["width"], ge=1, description="vdsr, edsr, rcan: feature channels (64)."
    )
    depth: int | None = Field(
        DEFAULTS["depth"],
        ge=0,
        description="vdsr: conv layers (20, at least 2); edsr: residual blocks (16); rcan: "
        "blocks per residual group (20). null = the published depth.",
    )
    groups: int = Field(DEFAULTS["groups"], ge=1, description="rcan: residual groups (10).")
    reduction: int = Field(
        DEFAULTS["reduction"], ge=1, description="rcan: channel-attention reduction (16)."
    )
    res_scale: float = Field(
        DEFAULTS["res_scale"],
        gt=0,
        description="edsr: scale of each residual block's branch (1; 0.1 in big EDSR).",
    )

    @field_validator("name")
    @classmethod
    def _trainable(cls, name: str) -> str:
        """The choices are read when validating, so a model added to ``MODELS`` is one."""
        names = trainable_names()
        if name not in names:
            choices = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
            raise ValueError(f"Input should be {choices}")
        return name

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``build_model(name, **kwargs)``; also written to run.json."""
        return self.model_dump(exclude={"name"})


class DataConfig(_Section):
    """What the loader reads: a DATA folder written by ``python -m data_prep build``."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )

    root: str = Field(
        description="DATA folder holding manifest.json and the shards (docs/formats.md "
        "section 2). Required."
    )
    pairs: list[str] | None = Field(
        None,
        description="Train on these pairs only (names as in the manifest, each once, no "
        "control characters); one name = self-training. null = pooled training on every pair.",
    )
    crop_size: Annotated[int, Field(ge=4)] | Literal["full"] = Field(
        256,
        description="Side of the square random crops in HR pixels, a multiple of the "
        f"model's input multiple ({_input_multiples()}); `full` = the whole training region "
        "as one crop (floored to that multiple; the smallest region's size where pairs "
        "differ).",
    )
    global_batch_size: int = Field(
        8,
        ge=1,
        description="GLOBAL batch: crops per optimizer step summed over all processes "
        "(the paper's 8 on one GPU). Each process gets global_batch_size / num_processes, "
        "which must divide evenly; the batch-aware attention spans the global batch.",
    )
    augment: bool = Field(
        False,
        description="Random flips and 90-degree rotations (D4) of each crop, applied to LR "
        "and HR together. Off in the paper-faithful config.",
    )
    num_workers: int = Field(
        2,
        ge=0,
        description="Loader worker threads per process (signals reach only the main thread).",
    )
    cache_dir: str | None = Field(
        None,
        description="Node-local folder into which each shard read is staged once (shared by "
        "the node's processes; checked against the manifest's sha256 on arrival, and with its "
        "size by each process that finds it there: a damaged copy is fetched again, once). "
        "null = read shards where they are: local files at their index's offsets, http(s) "
        "shards by range requests (docs/scaling.md).",
    )
    verify: bool = Field(
        False,
        description="With train.py --check: hash every shard, index and member against the "
        "manifest (local DATA folders; as python -m data_prep verify). Training itself never "
        "hashes whole shards; it checks each member it reads against its index.",
    )

    @field_validator("pairs")
    @classmethod
    def _distinct_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must name at least one pair, or be null for all pairs")
        for name in value:
            if any(ord(char) < 32 or ord(char) == 127 for char in name):
                raise ValueError(f"pair name {name!r} holds a control character")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"names pair {repeated[0]!r} more than once")
        return value


class OptimConfig(_Section):
    """Adam with a learning-rate schedule (staircase or cosine, optional warm-up) and an L1 or
    L2 pixel loss."""

    lr: float = Field(
        4e-4, gt=0, description="Learning rate of Adam: the initial one, or the peak after warm-up."
    )
    schedule: Literal["staircase", "cosine"] = Field(
        "staircase",
        description="`staircase`: multiply the learning rate by lr_decay_factor every "
        "lr_decay_every steps (the paper's). `cosine`: decay it from lr to 0 at train.steps "
        "along half a cosine (after the warm-up); lr_decay_every/lr_decay_factor then do not "
        "apply.",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Raise the learning rate linearly from lr / warmup_steps to lr over the "
        "first warmup_steps steps, then follow the schedule (0 = no warm-up, the paper's).",
    )
    lr_decay_every: int = Field(
        10_000,
        ge=1,
        description="Multiply the learning rate by lr_decay_factor every this "
        "many steps (staircase).",
    )
    lr_decay_factor: float = Field(0.5, gt=0, le=1, description="Staircase decay factor.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Adam (L2) weight decay.")
    loss: Literal["l1", "l2"] = Field(
        "l1", description="Pixel loss: `l1` (MAE, the paper's) or `l2` (MSE)."
    )
    grad_clip_norm: float | None = Field(
        None,
        gt=0,
        description="Clip the global gradient norm to this value; null = no clipping (the "
        "gradient norm is still logged). Under DeepSpeed the trainer writes it into the "
        "DeepSpeed config's gradient_clipping.",
    )
    fused: bool | None = Field(
        None,
        description="Fused Adam (one kernel for all parameters), which skips a non-finite "
        "step on the device; null = on CUDA only. With it (bf16 or float32, no DeepSpeed) a "
        "step never waits for the device; plain Adam's skip is a read by the host, free on "
        "the CPU (docs/training.md).",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError("each beta must lie in [0, 1)")
        return value


class TrainConfig(_Section):
    """Length, output folder, checkpoints, precision and the optional improvements."""

    run_dir: str = Field(
        description="RUN folder (docs/formats.md section 3). A folder holding another run is "
        "refused unless resuming. Required."
    )
    steps: int = Field(120_000, ge=1, description="Optimizer steps in total.")
    init_from: str | None = Field(
        None,
        description="Start from another model's weights: a finished RUN folder (its EMA "
        "weights if it has them, else the raw ones) or a MODEL.zip written by `python -m "
        "aeatrain.export`. The optimizer, schedule and step start fresh. The model section "
        "must equal the source's model name and keywords, else the run is refused (no "
        "partial loading). Recorded in run.json (`init_from`). null = a fresh initialisation.",
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,  # NumPy's global seed, which accelerate's set_seed sets, is 32-bit
        description="Seed of the weights' initialisation and of the crops: the batch "
        "of a step is a pure function of (seed, step, rank). 0 to 2^32 - 1.",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] | None = Field(
        None,
        description="Autocast precision; null = whatever `accelerate launch` was configured "
        "with (`--mixed_precision` or its config file). fp16 uses loss scaling; steps it "
        "skips are counted and logged.",
    )
    resume: Literal["never", "auto"] = Field(
        "never",
        description="`auto` (or the `--resume` flag): continue from the newest COMPLETE "
        "checkpoint in run_dir/checkpoints, or start afresh when there is none.",
    )
    checkpoint_every: int = Field(
        5000,
        ge=1,
        description="Write run_dir/checkpoints/step_N every this many steps (and "
        "at the end and on preemption).",
    )
    keep_checkpoints: int = Field(3, ge=1, description="Keep only the newest K checkpoints.")
    max_skipped_steps: int = Field(
        25,
        ge=1,
        description="Stop (exit 2, message naming the step) after this many CONSECUTIVE "
        "skipped steps: a non-finite loss or gradient, or an fp16 overflow. Skipped steps "
        "never update the weights, so no checkpoint holds NaN weights.",
    )
    ema: bool = Field(
        False,
        description="Keep an exponential moving average of the weights; it is validated "
        "(val_ema/*) and exported (model_ema.safetensors) separately from the raw weights.",
    )
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per step.")
    sync_batchnorm: bool = Field(
        False,
        description="Convert BatchNorm to SyncBatchNorm when running on several "
        "processes (CUDA only in PyTorch).",
    )
    compile: bool = Field(False, description="Wrap the model in torch.compile.")
    channels_last: bool = Field(False, description="Use channels_last memory format.")


class LoggingConfig(_Section):
    """TensorBoard (run_dir/logs), validation by `aeatrain.evaluate`'s scorer, progress bar."""

    log_every: int = Field(50, ge=1, description="Log train scalars every this many steps.")
    eval_every: int = Field(
        5000,
        ge=1,
        description="Validate every this many steps (and at the end) exactly as "
        "`python -m aeatrain.evaluate` scores the run: each pair's whole registered image "
        "predicted at once (`full` split), its test tiles scored, averaged over tiles then "
        "pairs, the images split over the processes; logs dPSNR, dSSIM (docs/method.md "
        "section 5), image grids, reference heatmaps.",
    )
    eval_max_pairs: int | None = Field(
        None,
        ge=1,
        description="Validate on the first this many pairs (pair-name order) of those "
        "trained on (null = all, what evaluate scores). Replaces `eval_max_tiles`.",
    )
    image_tiles: int = Field(
        2,
        ge=0,
        description="Test tiles shown as LR | prediction | HR grids at each validation "
        "(the main process's first; the prediction is the scored whole-image one).",
    )
    heatmap_refs: int = Field(
        4,
        ge=0,
        description="aeanet: show the relevance maps of this many shared references "
        "(paper Fig. 6) for each shown tile; 0 = none.",
    )
    progress_bar: bool = Field(True, description="tqdm progress bar on the main process.")


class Config(BaseModel):
    """The whole config tree; ``Config.model_validate(dict)`` checks every key and type."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    data: DataConfig = Field(description="The training data.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimisation.")
    train: TrainConfig = Field(description="The run.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Monitoring.")

    def to_yaml(self) -> str:
        """The resolved tree as YAML, the exact text saved as RUN/config.yaml."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
