"""Models: the U-Net baseline, GVTNet, AEANet (with its ablations), VDSR, EDSR, RCAN, LB-NLM.

``MODELS`` is the one table of them: one :class:`ModelSpec` per model name, holding all the
toolkit knows of it (its factory, the keywords it takes and their defaults, its input
multiple, whether it takes the batch split, its label and one-line summary). The config's
choices and defaults, the trainer, export and compare read it; ``build_model(name, **kw)``
is the one factory. Ablations are keyword settings of "aeanet" (``num_refs=16`` / ``32``;
``num_refs=0`` = batch-aware only; ``batch_aware=False`` = references only). Every model
maps (N, 1, H, W) in [0, 1] at the HR frame to the same shape; H and W must be multiples
of its ``input_multiple`` (4 for the U-Net family, 1 for VDSR, EDSR, RCAN and "lbnlm", the
paired library non-local means of ``aeatrain/lbnlm.py``, which is built from data, not
trained).

This module imports no torch: the factories import their network when called, so the
config (and the data_prep CLIs that read configs) stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """One model: everything outside its own module that the toolkit knows of it."""

    build: Callable[..., nn.Module]  # keyword-only factory, called with every option below
    options: Mapping[str, Any]  # the keywords it takes, and their defaults
    input_multiple: int  # H and W of its input must be multiples of it (= the class's own)
    label: str  # display name (compare's tables)
    summary: str  # one line: what it is (config reference, export's README)
    family: str  # "U-Net", "classic SR" or "library"
    batch_aware: bool = False  # training splits each batch with its batch_aware keyword
    trainable: bool = True  # False: built from data by its own CLI, not by train.py
    global_context: str = ""  # its image-global part, if any (export's README)


def _unet(**kw: Any) -> nn.Module:
    from aeatrain.models.unet import UNet

    return UNet(bottom="res", **kw)


def _gvtnet(**kw: Any) -> nn.Module:
    from aeatrain.models.unet import UNet

    return UNet(bottom="attention", num_refs=0, batch_aware=False, **kw)


def _aeanet(**kw: Any) -> nn.Module:
    from aeatrain.models.unet import UNet

    return UNet(bottom="attention", **kw)


def _vdsr(*, depth: int | None, **kw: Any) -> nn.Module:
    from aeatrain.models.srnets import VDSR

    return VDSR(**kw, **_depth(depth))


def _edsr(*, depth: int | None, **kw: Any) -> nn.Module:
    from aeatrain.models.srnets import EDSR

    return EDSR(**kw, **_depth(depth))


def _rcan(*, depth: int | None, **kw: Any) -> nn.Module:
    from aeatrain.models.srnets import RCAN

    return RCAN(**kw, **_depth(depth))


def _depth(depth: int | None) -> dict[str, int]:
    """depth None = the published depth: the class's own default (20, 16, 20)."""
    return {} if depth is None else {"depth": depth}


def _lbnlm(**kw: Any) -> nn.Module:
    from aeatrain.models.lbnlm import LBNLM

    return LBNLM(**kw)


# bn_momentum is PyTorch's convention (TF's 0.997).
_UNET = {"base_channels": 32, "bn_momentum": 0.003, "bn_eps": 1e-5, "residual": False}
_ATTENTION = {**_UNET, "heads": 2, "normalize": "linear"}
_ATTENTION_GLOBAL = "The bottom attention block"

MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(
        _unet, _UNET, 4, "U-Net", "the U-Net baseline (residual bottom block)", "U-Net"
    ),
    "gvtnet": ModelSpec(
        _gvtnet, _ATTENTION, 4, "GVTNet",
        "the U-Net with a plain self-attention bottom block", "U-Net",
        global_context=_ATTENTION_GLOBAL,
    ),
    "aeanet": ModelSpec(
        _aeanet, {**_ATTENTION, "num_refs": 64, "batch_aware": True}, 4, "AEANet",
        "the paper's network: augmented (shared-reference and batch-aware) attention",
        "U-Net", batch_aware=True, global_context=_ATTENTION_GLOBAL,
    ),
    "vdsr": ModelSpec(
        _vdsr, {"width": 64, "depth": None}, 1, "VDSR",
        "VDSR, a scale-1 body at the HR frame (20 conv layers, adds its input)", "classic SR",
    ),
    "edsr": ModelSpec(
        _edsr, {"width": 64, "depth": None, "res_scale": 1.0, "residual": False}, 1, "EDSR",
        "EDSR, a scale-1 body at the HR frame (16 residual blocks)", "classic SR",
    ),
    "rcan": ModelSpec(
        _rcan,
        {"width": 64, "depth": None, "groups": 10, "reduction": 16, "residual": False},
        1, "RCAN", "RCAN, a scale-1 body at the HR frame (10 groups of 20 channel-attention "
        "blocks)", "classic SR",
        global_context="The channel attention (a mean over all pixels)",
    ),
    "lbnlm": ModelSpec(
        _lbnlm,
        {"patch": 7, "components": 8, "neighbours": 16, "h": 0.05, "eps": 0.0,
         "library_size": 1},
        1, "LB-NLM (ours)", "paired library non-local means, built by python -m aeatrain.lbnlm",
        "library", trainable=False,
    ),
}  # fmt: skip
DEFAULT_MODEL = "aeanet"


def trainable_names() -> tuple[str, ...]:
    """The models train.py trains (the config's ``model.name`` choices), in table order."""
    return tuple(name for name, spec in MODELS.items() if spec.trainable)


def _section_defaults() -> dict[str, Any]:
    """Every keyword of a trainable model with its default: the config's model section.
    A keyword several models take has one default (else the table is wrong)."""
    defaults: dict[str, Any] = {}
    for name in trainable_names():
        for key, value in MODELS[name].options.items():
            if defaults.setdefault(key, value) != value:
                raise ValueError(f"model {name!r}: option {key!r} defaults differ between models")
    return defaults


TRAINABLE = trainable_names()
MODEL_NAMES = tuple(MODELS)
SR_NETWORKS = tuple(name for name, spec in MODELS.items() if spec.family == "classic SR")
# The config's model section; depth None = the published depth of the named network.
DEFAULTS: dict[str, Any] = _section_defaults()


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; ValueError naming the choices for an unknown name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, **kw: Any) -> nn.Module:
    """Build model ``name`` of ``MODELS`` with its defaults (``ModelSpec.options``).

    A trainable model accepts every keyword of ``DEFAULTS`` (so a config can pass its whole
    model section); one that has no meaning for it (``num_refs`` for "unet", say) must keep
    its default, else ValueError. "lbnlm" takes only its own keywords (``LBNLM``'s).
    Unknown names or keywords raise ValueError naming them. The batch-aware branch of
    "aeanet" spans this process's batch until the trainer hands it the global batch
    (``aeatrain.collective.span_global_batch``).

    Parameters with base_channels=32: unet 793,408; gvtnet 564,288; aeanet 572,480.
    VDSR, EDSR, RCAN (``width``, ``depth``; RCAN ``groups``, ``reduction``; EDSR
    ``res_scale``; EDSR/RCAN ``residual`` adds the input): vdsr 665,921 (20 layers of 64);
    edsr 1,219,841 (16 blocks of 64); rcan 15,294,625 (10 groups of 20 blocks of 64).
    """
    spec = model_spec(name)
    shared = DEFAULTS if spec.trainable else {}
    unknown = sorted(set(kw) - set(shared) - set(spec.options))
    if unknown:
        known = sorted({*shared, *spec.options})
        raise ValueError(f"unknown {name} option(s) {unknown}; known: {known}")
    inapplicable = sorted(k for k in kw if k not in spec.options and kw[k] != shared[k])
    if inapplicable:
        raise ValueError(f"option(s) {inapplicable} do not apply to model {name!r}")
    return spec.build(**{**spec.options, **{k: kw[k] for k in kw if k in spec.options}})


def input_multiple(name: str) -> int:
    """The ``input_multiple`` the model ``name`` declares, without building it: H and W of
    its input (training crops, padded predictions) must be multiples of it."""
    return model_spec(name).input_multiple


def shared_references(model: nn.Module) -> int:
    """How many shared learned references a built model has (aeanet's ``num_refs``; 0 for
    every other model)."""
    attention = getattr(model, "attention", None)
    return int(getattr(attention, "num_refs", 0) or 0)


__all__ = [
    "DEFAULTS",
    "DEFAULT_MODEL",
    "MODELS",
    "MODEL_NAMES",
    "SR_NETWORKS",
    "TRAINABLE",
    "ModelSpec",
    "build_model",
    "input_multiple",
    "model_spec",
    "shared_references",
    "trainable_names",
]
