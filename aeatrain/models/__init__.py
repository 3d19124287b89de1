"""Models: the U-Net baseline, GVTNet, AEANet (with its ablations), VDSR, EDSR and RCAN.

``build_model(name, **kw)`` is the one factory; ablations are keyword settings of
"aeanet" (``num_refs=16`` / ``32``; ``num_refs=0`` = batch-aware only;
``batch_aware=False`` = references only). Every model maps (N, 1, H, W) in [0, 1] at the
HR frame to the same shape and declares ``input_multiple``: H and W must be multiples of
it (4 for the U-Net family, 1 for VDSR, EDSR, RCAN and "lbnlm", the paired library
non-local means of ``aeatrain/lbnlm.py``, which is built from data, not trained).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from aeatrain.models.attention import AugmentedAttention
from aeatrain.models.lbnlm import LBNLM
from aeatrain.models.srnets import EDSR, RCAN, VDSR
from aeatrain.models.unet import UNet, check_input

TRAINABLE = ("unet", "gvtnet", "aeanet", "vdsr", "edsr", "rcan")
MODEL_NAMES = (*TRAINABLE, "lbnlm")  # lbnlm: built by python -m aeatrain.lbnlm, not trained
SR_NETWORKS = ("vdsr", "edsr", "rcan")

# Defaults of the published network. bn_momentum is PyTorch's convention (TF's 0.997).
DEFAULTS: dict[str, Any] = {
    "base_channels": 32,
    "heads": 2,
    "num_refs": 64,
    "batch_aware": True,
    "normalize": "linear",
    "bn_momentum": 0.003,
    "bn_eps": 1e-5,
    "residual": False,
    # VDSR, EDSR, RCAN. depth None = the published depth of the named network.
    "width": 64,
    "depth": None,
    "groups": 10,
    "reduction": 16,
    "res_scale": 1.0,
}
PUBLISHED_DEPTH = {"vdsr": 20, "edsr": 16, "rcan": 20}  # conv layers; blocks; blocks per group
_CLASSES: dict[str, type[nn.Module]] = {
    "unet": UNet, "gvtnet": UNet, "aeanet": UNet,
    "vdsr": VDSR, "edsr": EDSR, "rcan": RCAN, "lbnlm": LBNLM,
}  # fmt: skip

_UNET_KEYS = ("base_channels", "bn_momentum", "bn_eps", "residual")
_APPLIES = {
    "unet": _UNET_KEYS,
    "gvtnet": (*_UNET_KEYS, "heads", "normalize"),
    "aeanet": (*_UNET_KEYS, "heads", "num_refs", "batch_aware", "normalize"),
    "vdsr": ("width", "depth"),
    "edsr": ("width", "depth", "res_scale", "residual"),
    "rcan": ("width", "depth", "groups", "reduction", "residual"),
}


def build_model(name: str, **kw: Any) -> nn.Module:
    """Build one of ``MODEL_NAMES`` with the published defaults (see ``DEFAULTS``).

    Every keyword of ``DEFAULTS`` is accepted for every name but "lbnlm" (which takes
    only its own: ``LBNLM``'s keywords), so a config can pass its
    whole model section; one that has no meaning for the named model (``num_refs`` for
    "unet", say) must keep its default, else ValueError. Unknown names or keywords raise
    ValueError naming them. The batch-aware branch of "aeanet" spans this process's batch
    until the trainer hands it the global batch (``aeatrain.collective.span_global_batch``).

    Parameters with base_channels=32: unet 793,408; gvtnet 564,288; aeanet 572,480.
    VDSR, EDSR, RCAN (``width``, ``depth``; RCAN ``groups``, ``reduction``; EDSR
    ``res_scale``; EDSR/RCAN ``residual`` adds the input): vdsr 665,921 (20 layers of 64);
    edsr 1,219,841 (16 blocks of 64); rcan 15,294,625 (10 groups of 20 blocks of 64).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name == "lbnlm":
        return _build_lbnlm(kw)
    unknown = sorted(set(kw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(DEFAULTS)}")
    inapplicable = sorted(k for k in kw if k not in _APPLIES[name] and kw[k] != DEFAULTS[k])
    if inapplicable:
        raise ValueError(f"option(s) {inapplicable} do not apply to model {name!r}")
    opts = {**DEFAULTS, **kw}
    if name in SR_NETWORKS:
        return _build_sr_network(name, opts)
    unet_kw = {k: opts[k] for k in ("base_channels", "bn_momentum", "bn_eps", "residual")}
    if name == "unet":
        return UNet(bottom="res", **unet_kw)
    batch_aware = opts["batch_aware"] if name == "aeanet" else False
    return UNet(
        bottom="attention",
        heads=opts["heads"],
        num_refs=opts["num_refs"] if name == "aeanet" else 0,
        batch_aware=batch_aware,
        normalize=opts["normalize"],
        **unet_kw,
    )


def input_multiple(name: str) -> int:
    """The ``input_multiple`` the model ``name`` declares, without building it: H and W of
    its input (training crops, padded predictions) must be multiples of it."""
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _CLASSES[name].input_multiple


def _build_lbnlm(kw: dict[str, Any]) -> nn.Module:
    """The library method takes its own keywords (``LBNLM``), none of ``DEFAULTS``."""
    known = ("patch", "components", "neighbours", "h", "eps", "library_size")
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ValueError(f"unknown lbnlm option(s) {unknown}; known: {list(known)}")
    return LBNLM(**kw)


def _build_sr_network(name: str, opts: dict[str, Any]) -> nn.Module:
    depth = PUBLISHED_DEPTH[name] if opts["depth"] is None else opts["depth"]
    if name == "vdsr":
        return VDSR(width=opts["width"], depth=depth)
    if name == "edsr":
        return EDSR(
            width=opts["width"], depth=depth, res_scale=opts["res_scale"], residual=opts["residual"]
        )
    return RCAN(
        width=opts["width"],
        groups=opts["groups"],
        depth=depth,
        reduction=opts["reduction"],
        residual=opts["residual"],
    )


__all__ = [
    "DEFAULTS",
    "EDSR",
    "LBNLM",
    "MODEL_NAMES",
    "RCAN",
    "SR_NETWORKS",
    "TRAINABLE",
    "VDSR",
    "AugmentedAttention",
    "UNet",
    "build_model",
    "check_input",
    "input_multiple",
]
