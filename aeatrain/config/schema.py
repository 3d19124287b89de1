"""The one typed config tree of a training run: YAML in, dotted CLI overrides, saved in RUN/.

Five sections, each a pydantic model with ``extra="forbid"`` so a misspelt key is an error
rather than a silently ignored setting: ``model`` (what :func:`aeatrain.models.build_model`
builds), ``data`` (what the loader reads), ``optim`` (Adam, the staircase schedule, the loss,
clipping), ``train`` (steps, run folder, checkpoints, precision, EMA, speed options) and
``logging`` (TensorBoard cadence, validation, images). Every field carries a description:
docs/training.md is generated from them (``python -m aeatrain.config.schema docs/training.md``)
and a test keeps it current.

The defaults are the paper-faithful values of docs/method.md section 4; improvements (EMA,
bf16, full-resolution crops, ...) are options switched on by their own configs.
"""

from __future__ import annotations

import re
import reprlib
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aeatrain.errors import MAX_SEED, UserError
from aeatrain.files.atomic import atomic_write_text
from aeatrain.models import DEFAULT_MODEL, DEFAULTS, MODELS, input_multiple, trainable_names

SECTIONS = ("model", "data", "optim", "train", "logging")


class ConfigError(UserError):
    """A config file or override that cannot be used; the message names the file and key."""


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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``--section.key value`` overrides, validate the result.

    Raises :class:`ConfigError` (one line, naming the file and the key) for a missing or
    unparsable file, an override that is not ``--section.key``, an unknown key or a value
    of the wrong type or range.
    """
    source = str(path) if path is not None else "<no config file>"
    tree = read_yaml_tree(path) if path is not None else {}
    for key, raw in parse_overrides(overrides):
        _set_dotted(tree, key, raw, source)
    return validate_tree(tree, source)


# A YAML file may reuse a node by alias; a few hundred bytes of nested aliases then stand
# for billions of values (an "alias bomb"), which validation and error messages expand. No
# config comes near these limits (the paper's is under 2 KiB and 100 values).
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000


class _Yaml12Loader(yaml.SafeLoader):
    """The loader of every YAML file aeatrain reads (:func:`load_yaml`).

    YAML 1.2 booleans: only true/false. PyYAML follows YAML 1.1, where ``no``, ``yes``,
    ``on`` and ``off`` are booleans too, so ``mixed_precision: no`` (or the override
    ``--train.mixed_precision no``) would arrive as False instead of the setting "no".
    A key given twice in one mapping is refused (PyYAML keeps the last one silently), and
    a document whose aliases expand to more than :data:`MAX_YAML_VALUES` values is refused
    before anything is built from it."""

    def construct_document(self, node: yaml.Node) -> Any:
        values = _expanded_values(node, {})
        if values > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to {values:,} values, over the limit of "
                f"{MAX_YAML_VALUES:,}; write the values out", node.start_mark,
            )  # fmt: skip
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` entries may be overridden: that is their purpose
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue  # refused by PyYAML itself below
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping",
                        key_node.start_mark,
                    )  # fmt: skip
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_values(node: yaml.Node, counted: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias written out (shared nodes are
    counted once per use, computed once: linear in the document's size)."""
    if id(node) in counted:
        return counted[id(node)]
    counted[id(node)] = 1  # a recursive alias counts once rather than forever
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_values(item, counted) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(
            _expanded_values(key, counted) + _expanded_values(value, counted)
            for key, value in node.value
        )
    else:
        total = 1
    counted[id(node)] = total
    return total


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(text: str | bytes, source: str | Path) -> Any:
    """Parse YAML text as every aeatrain reader does; UserError naming ``source`` (and the
    line) for text that is not UTF-8, too large, not YAML, or has a key given twice."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source}: {len(text):,} bytes, over the {MAX_YAML_BYTES:,} a YAML file read by "
            f"aeatrain may have"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{source}: not UTF-8 text (byte {err.start} is {text[err.start]:#04x}); "
                f"save it as UTF-8"
            ) from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(
            f"{source}:{line} not valid YAML ({getattr(err, 'problem', None) or err})"
        ) from None


def read_saved_config(path: str | Path) -> dict[str, dict]:
    """A run's ``config.yaml`` as :meth:`Config.to_yaml` saved it: section -> {key: value}.

    The one reader of saved configs (runs, run folders, compare). It is not validated
    against today's :class:`Config`: a run of an older aeatrain may hold keys since renamed
    or removed, and its readers show or compare what ran. ConfigError names the file and
    the section that is not a mapping."""
    tree = read_yaml_tree(path)
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: section {section!r} is a {type(values).__name__}, not a mapping"
            )
    return tree


def read_yaml_tree(path: str | Path) -> dict:
    """The mapping in a YAML config file; ConfigError naming the file if it is not one.

    An empty file is refused: it would silently mean every default, the paper's
    120,000-step setup, which is never what an empty file was meant to say."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        tree = load_yaml(path.read_bytes(), path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    if tree is None:
        raise ConfigError(
            f"{path}: the config file is empty; write at least data.root and train.run_dir "
            f"(an empty file would mean every default: the paper's 120,000-step setup)"
        )
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections {SECTIONS}, got a {type(tree).__name__}"
        )
    return tree


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``["--train.steps", "100", "--optim.lr=1e-3"]`` -> ``[("train.steps", "100"), ...]``."""
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(
                f"override {arg!r}: expected --section.key VALUE or "
                f"--section.key=VALUE with section one of {', '.join(SECTIONS)}"
            )
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(args):
                raise ConfigError(f"override {arg}: missing a value")
            key, raw = arg[2:], args[index + 1]
            index += 2
        pairs.append((key, raw))
    return pairs


def _set_dotted(tree: dict, key: str, raw: str, source: str) -> None:
    """Set ``tree[section][field] = value`` with the value parsed as YAML for its field."""
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{source}: override --{key}: expected --section.key")
    section, field = parts
    if section not in tree or tree[section] is None:
        tree[section] = {}
    if not isinstance(tree[section], dict):
        raise ConfigError(
            f"{source}: {section}: expected a mapping, got {type(tree[section]).__name__}"
        )
    tree[section][field] = _parse_value(raw, _field_annotation(section, field))


def _field_annotation(section: str, field: str) -> Any:
    section_field = Config.model_fields.get(section)
    if section_field is None:
        return None
    info = section_field.annotation.model_fields.get(field)
    return None if info is None else info.annotation


def _parse_value(raw: str, annotation: Any) -> Any:
    """YAML scalar/list syntax, except that a string field keeps the text as typed.

    ``--data.root 2024`` must stay the folder "2024", and ``--data.pairs sample_01`` may
    name one pair without list brackets.
    """
    try:
        value = load_yaml(raw, "override")
    except ConfigError:
        value = raw
    if value is None:
        return None
    if _accepts(annotation, str) and not isinstance(value, str):
        return raw
    if _accepts_list_of_str(annotation) and not isinstance(value, list):
        return [raw]
    return value


def _union_args(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _accepts(annotation: Any, kind: type) -> bool:
    return kind in _union_args(annotation)


def _accepts_list_of_str(annotation: Any) -> bool:
    return any(
        typing.get_origin(arg) is list and typing.get_args(arg) == (str,)
        for arg in _union_args(annotation)
    )


# Keys of earlier aeatrain versions whose meaning changed: refused with what to write now.
RENAMED_KEYS = {
    ("logging", "eval_max_tiles"): "renamed logging.eval_max_pairs: validation now scores "
    "whole pairs (3 test tiles each) as aeatrain.evaluate does; give a number of pairs",
}


def validate_tree(tree: dict, source: str) -> Config:
    """Pydantic validation; every error becomes part of ONE line naming its dotted key."""
    for (section, key), message in RENAMED_KEYS.items():
        if isinstance(tree.get(section), dict) and key in tree[section]:
            raise ConfigError(f"{source}: {section}.{key}: {message}")
    try:
        config = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None
    check_crop_multiple(config, source)
    return config


def check_crop_multiple(config: Config, source: str) -> None:
    """``data.crop_size`` against the model's ``input_multiple`` (one source of it: the
    model's spec, ``aeatrain.models.MODELS``); ConfigError naming the key."""
    multiple = input_multiple(config.model.name)
    crop = config.data.crop_size
    if isinstance(crop, int) and crop % multiple:
        raise ConfigError(
            f"{source}: data.crop_size: must be a multiple of {multiple}, the input multiple "
            f"of model {config.model.name!r} (got {crop})"
        )


def format_validation_error(err: ValidationError) -> str:
    """``train.stepz: unknown key; optim.lr: Input should be a valid number (got 'x')``.

    Errors of one key (the branches of a union such as ``int | "full"``) share one entry.
    """
    by_key: dict[str, list[str]] = {}
    for item in err.errors():
        loc = [str(part) for part in item["loc"] if not _is_union_branch(part)]
        key = ".".join(loc) or "<top>"
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            message = f"{message} (got {_short_repr(item.get('input'))})"
        if message not in by_key.setdefault(key, []):
            by_key[key].append(message)
    return "; ".join(f"{key}: {' or '.join(messages)}" for key, messages in by_key.items())


def _short_repr(value: Any) -> str:
    """repr of a value as typed, bounded: a mistaken value may be a whole YAML tree."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 80, 80
    return short.repr(value)


def _is_union_branch(part: Any) -> bool:
    """Pydantic names union branches in error locations (``int``, ``literal['full']``)."""
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool", "list[str]", "constrained-int")
        or part.startswith(("literal[", "function-after["))
    )


# --- docs/training.md --------------------------------------------------------------------

DOC_START = "<!-- config-reference:start (generated by python -m aeatrain.config.schema) -->"
DOC_END = "<!-- config-reference:end -->"


def reference_markdown() -> str:
    """One table per section: key, type, default, meaning; from the field descriptions."""
    blocks = []
    for section in SECTIONS:
        model = Config.model_fields[section].annotation
        lines = [
            f"### `{section}`",
            "",
            model.__doc__.strip(),
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, info in model.model_fields.items():
            default = "required" if info.is_required() else f"`{_yaml_inline(info.default)}`"
            meaning = (info.description or "").replace("|", "\\|")
            lines.append(
                f"| `{section}.{name}` | {_type_name(info.annotation)} | {default} | {meaning} |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _yaml_inline(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{arg}`" for arg in typing.get_args(annotation))
    if origin is Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin in (list, tuple):
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def update_reference(doc_path: str | Path) -> bool:
    """Rewrite the generated block of ``doc_path``; True when the file changed."""
    doc_path = Path(doc_path)
    text = doc_path.read_text()
    head, sep, rest = text.partition(DOC_START)
    _, sep_end, tail = rest.partition(DOC_END)
    if not sep or not sep_end:
        raise ConfigError(f"{doc_path}: markers {DOC_START!r} ... {DOC_END!r} not found")
    new = f"{head}{DOC_START}\n\n{reference_markdown()}\n{DOC_END}{tail}"
    if new == text:
        return False
    atomic_write_text(doc_path, new, overwrite=True)
    return True


if __name__ == "__main__":
    from aeatrain.errors import run_cli

    def _main() -> int:
        if len(sys.argv) != 2:
            raise UserError("usage: python -m aeatrain.config.schema docs/training.md")
        update_reference(sys.argv[1])
        return 0

    run_cli(_main)
