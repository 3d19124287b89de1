"""The run folder's final files: written by the trainer, read by evaluate/predict/refmaps.

docs/formats.md section 3 is the contract. A finished run folder holds

    RUN/model.safetensors        raw weights (state_dict of build_model(name, **kwargs))
    RUN/model_ema.safetensors    EMA weights, when EMA was on
    RUN/config.yaml              the resolved config, exactly what ran
    RUN/run.json                 scale, bit depths, dataset, model name and kwargs, step,
                                 which weight files exist

Weights are safetensors (no pickle: a run folder from someone else cannot run code when
loaded) with metadata ``{"model": name, "step": "N", "kind": "raw" | "ema"}``. Every file
is written atomically, and ``run.json`` last: a run folder with a ``run.json`` is complete.
A resumed run finishes into the same folder, so these four files are replaced on purpose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from aeatrain import __version__
from aeatrain.config.load import read_saved_config
from aeatrain.data.format import parse_json
from aeatrain.errors import UserError
from aeatrain.files.atomic import atomic_write_bytes, atomic_write_text
from aeatrain.run import CONFIG_YAML, RUN_FORMAT, RUN_JSON, WEIGHT_FILES

log = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1


class RunError(UserError):
    """A run folder that cannot be used; the message names the folder or file."""


@dataclass
class RunInfo:
    """What a run folder says about its model; returned by :func:`load_run`."""

    path: Path
    scale: float
    bit_depths: list[int]
    model_name: str
    model_kwargs: dict
    step: int
    weights_kind: str  # "raw" or "ema": which weights were loaded
    config: dict = field(default_factory=dict)  # config.yaml as a dict
    dataset: dict = field(default_factory=dict)  # {"path", "manifest_sha256", ...}

    @property
    def name(self) -> str:
        """The run folder's name, used as the run's label in tables."""
        return self.path.name

    @property
    def train_pairs(self) -> list[str] | None:
        """``config["data"]["pairs"]``: the pairs trained on, or None for all of them."""
        data = self.config.get("data") or {}
        pairs = data.get("pairs") if isinstance(data, dict) else None
        if isinstance(pairs, str):  # a hand-written config may name one pair bare
            return [pairs]
        return [str(p) for p in pairs] if pairs else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP, AveragedModel (``.module``) or torch.compile (``_orig_mod``).

    Saved state_dicts must load into a freshly built model, so no wrapper prefixes.
    """
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _weights_bytes(model: nn.Module, *, model_name: str, step: int, kind: str) -> bytes:
    """safetensors bytes of the model's state_dict (on CPU, contiguous) plus metadata."""
    state = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in unwrap_model(model).state_dict().items()
    }
    metadata = {"model": model_name, "step": str(step), "kind": kind}
    return save_safetensors(state, metadata=metadata)


def write_run_files(
    run_dir: str | Path,
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict,
    scale: float,
    bit_depths: list[int],
    dataset: dict,
    step: int,
    config_yaml: str,
    ema_model: nn.Module | None = None,
    init_from: dict | None = None,
) -> None:
    """Write (or replace) a run folder's weights, config.yaml and run.json, atomically.

    ``model``/``ema_model`` may be wrapped (DDP, AveragedModel, compiled); the plain
    module's state_dict is saved. ``dataset`` is recorded as given (the trainer passes
    ``{"identity": ..., "path": ..., "manifest_sha256": ...}``); ``init_from`` is
    :attr:`InitialWeights.record` of the weights the run started from (None: its own
    initialisation). ``run.json`` is written last, so a reader that finds it finds
    complete weights. Call on the main process only.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {"raw": WEIGHT_FILES["raw"], "ema": None}
    atomic_write_bytes(
        run_dir / WEIGHT_FILES["raw"],
        _weights_bytes(model, model_name=model_name, step=step, kind="raw"),
        overwrite=True,
    )
    if ema_model is not None:
        weights["ema"] = WEIGHT_FILES["ema"]
        atomic_write_bytes(
            run_dir / WEIGHT_FILES["ema"],
            _weights_bytes(ema_model, model_name=model_name, step=step, kind="ema"),
            overwrite=True,
        )
    atomic_write_text(run_dir / CONFIG_YAML, config_yaml, overwrite=True)
    run_json = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "tool_version": __version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scale": float(scale),
        "bit_depths": [int(b) for b in bit_depths],
        "dataset": dataset,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "step": int(step),
        "weights": weights,
        "init_from": init_from,
    }
    RunJson.model_validate(run_json)  # the writer cannot drift from the reader
    atomic_write_text(run_dir / RUN_JSON, json.dumps(run_json, indent=2) + "\n", overwrite=True)
    log.info("wrote run files to %s (step %d, ema: %s)", run_dir, step, ema_model is not None)


class RunModelEntry(BaseModel):
    """run.json's ``model``: ``build_model(name, **kwargs)`` rebuilds the network."""

    model_config = ConfigDict(extra="allow")

    name: str
    kwargs: dict = {}


class RunJson(BaseModel):
    """``run.json`` (docs/formats.md section 3), as :func:`write_run_files` writes it.
    Keys a newer aeatrain adds are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["aeatrain-run"]
    format_version: int
    tool_version: str | None = None
    written: str | None = None
    scale: float = Field(gt=0)
    bit_depths: list[int]
    dataset: dict | None = None  # {"path", "manifest_sha256", "identity", ...}
    model: RunModelEntry
    step: int = Field(ge=0)
    weights: dict[str, str | None]  # "raw"/"ema" -> file name in the run folder (None: none)
    init_from: dict | None = None  # train.init_from: the weights the run started from


def read_run_json(run_dir: str | Path) -> RunJson:
    """``run.json`` of a run folder, checked; :class:`RunError` naming what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    path = run_dir / RUN_JSON
    if not path.is_file():
        hint = " (training has not finished yet?)" if (run_dir / "checkpoints").is_dir() else ""
        raise RunError(f"{run_dir}: not a finished run folder, {RUN_JSON} is missing{hint}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunError(f"{path}: not readable ({err.strerror or err})") from None
    try:
        header = parse_json(data, _RunHeader)
    except ValueError as err:
        raise RunError(f"{path}: not an aeatrain run file ({err})") from None
    if header.format_version != RUN_FORMAT_VERSION:
        raise RunError(
            f"{path}: format_version {header.format_version!r} is not supported "
            f"(this aeatrain reads {RUN_FORMAT_VERSION})"
        )
    try:
        return parse_json(data, RunJson)
    except ValueError as err:
        raise RunError(f"{path}: {err}") from None


class _RunHeader(BaseModel):
    """What tells a run.json from another file, checked before its fields."""

    format: Literal["aeatrain-run"]
    format_version: int | str | None = None


def _choose_weights(run_dir: Path, info: RunJson, weights: str) -> str:
    """ "auto" -> "ema" if the run has EMA weights else "raw"; checks the file exists."""
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', not {weights!r}")
    listed = info.weights
    kind = weights
    if weights == "auto":
        kind = "ema" if listed.get("ema") else "raw"
    if not listed.get(kind):
        raise RunError(f"{run_dir}: this run has no {kind} weights (run.json lists none)")
    path = run_dir / listed[kind]
    if not path.is_file():
        raise RunError(f"{path}: weights file missing; the run folder has no {kind} weights")
    return kind


def _load_state(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """Tensors and metadata of a safetensors file; checks it holds ``model_name``'s weights."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as err:
        raise RunError(f"{path}: not a readable safetensors file ({err})") from None
    saved_name = metadata.get("model")
    if saved_name is not None and saved_name != model_name:
        raise RunError(
            f"{path}: holds weights of model {saved_name!r}, run.json says {model_name!r}"
        )
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict(strict) with a one-line error naming the file and the first keys;
    weights holding nan or inf are refused (:func:`check_finite`)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} of another shape (e.g. {k}: "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        )
    if problems:
        raise RunError(f"{path}: weights do not match the model: " + "; ".join(problems))
    check_finite(state, path)
    model.load_state_dict(state, strict=True)


def finite_output(prediction: np.ndarray, run_dir: str | Path) -> np.ndarray:
    """``prediction`` if every value is finite, else :class:`RunError` naming the run.

    The one check of a network's output for every tool that writes or scores one (predict,
    evaluate, export): finite weights (:func:`check_finite`) can still give nan or inf,
    from weights that overflow or damaged BatchNorm statistics (a negative variance), and
    a prediction with them would be written as a blank image or scored as NaN."""
    bad = int(np.count_nonzero(~np.isfinite(prediction)))
    if bad:
        raise RunError(
            f"{run_dir}: the network's output holds {bad} nan or inf values (of "
            f"{prediction.size}) although its weights are finite: they overflow, or the "
            f"BatchNorm statistics are damaged; use weights of an earlier checkpoint"
        )
    return prediction


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding nan or inf: every output of such a network is non-finite (a
    blank image once clipped), so predict, evaluate, export and ``train.init_from`` stop
    here, naming the file, rather than write or score nonsense."""
    bad = {
        name: int((~torch.isfinite(tensor)).sum())
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    }
    if bad:
        first = next(iter(bad))
        raise RunError(
            f"{path}: {sum(bad.values())} weights are nan or inf (in {len(bad)} tensors, e.g. "
            f"{first}): the run diverged or the file is damaged; use weights of an earlier "
            f"checkpoint"
        )


def load_run(
    run_dir: str | Path, *, weights: str = "auto", device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunInfo]:
    """Build the run's model, load its weights, move it to ``device``, set eval mode.

    ``weights``: "auto" (EMA if the run has them, else raw), "ema" or "raw". Raises
    :class:`RunError` (a :class:`UserError`) for a missing or unfinished run folder, a
    run without the asked-for weights, or weights that do not fit the model.
    """
    from aeatrain.models import build_model  # imported here: final.py must not need models

    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    config = read_saved_config(run_dir / CONFIG_YAML)
    kind = _choose_weights(run_dir, info, weights)
    name, kwargs = info.model.name, dict(info.model.kwargs)
    try:
        model = build_model(name, **kwargs)
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{run_dir / RUN_JSON}: cannot build model {name!r} ({err})") from None
    path = run_dir / info.weights[kind]
    load_into(model, _load_state(path, name), path)
    model.to(device).eval()
    run = RunInfo(
        path=run_dir,
        scale=info.scale,
        bit_depths=list(info.bit_depths),
        model_name=name,
        model_kwargs=kwargs,
        step=info.step,
        weights_kind=kind,
        config=config,
        dataset=dict(info.dataset or {}),
    )
    log.info("loaded %s (%s, step %d, %s weights)", run_dir, name, run.step, kind)
    return model, run


# ------------------------------------------------------------- starting from other weights


@dataclass
class InitialWeights:
    """Weights a new run starts from (``train.init_from``): a run's or an exported package's."""

    source: Path
    model_name: str
    model_kwargs: dict
    state: dict[str, torch.Tensor]
    record: dict  # what the new run's run.json keeps under "init_from"


def run_weights(run_dir: Path) -> InitialWeights:
    """The weights a new run starts from when ``train.init_from`` names a finished run
    folder: its EMA weights if it has them (as predict chooses), else the raw ones."""
    info = read_run_json(run_dir)
    kind = _choose_weights(run_dir, info, "auto")
    name = info.model.name
    file = run_dir / info.weights[kind]
    record = {
        "path": str(run_dir.resolve()),
        "kind": "run",
        "weights": kind,
        "step": info.step,
        "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
    }
    kwargs = dict(info.model.kwargs)
    return InitialWeights(run_dir, name, kwargs, _load_state(file, name), record)
