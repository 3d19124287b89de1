"""Share a trained run as a BioImage Model Zoo package (bioimage.io model format 0.5).

    python -m aeatrain.export --run RUN --out MODEL.zip [--weights auto|raw|ema]
        [--data DATA] [--name NAME] [--author NAME ...] [--license SPDX] [--overwrite]

The package is what Fiji (deepImageJ), napari, ilastik and QuPath read (docs/export.md),
and it runs without aeatrain:

- weights in two formats, both of :class:`PackagedNetwork` (the network with aeatrain's
  whole-image padding inside): TorchScript (traced) and ONNX (opset 17, IR version 8,
  dynamic batch, height and width; what deepImageJ's onnxruntime reads). The bare
  network's state dict rides along as an attachment named in ``config.aeatrain``, for
  ``train.init_from``;
- one input ``lr`` and one output ``sr``, axes (batch, channel, y, x). The input is the LR
  image ALREADY UPSAMPLED to the HR pixel grid (bicubic, by the run's scale): the network
  was trained on the registered LR warped into the HR frame, and a same-size model is the
  one every consumer tiles and overlays without scale arithmetic (docs/export.md says why);
- any size from ``2 * halo + 16`` px on: the network reflect-pads to its multiple and
  crops back, as ``aeatrain.inference.predict_full`` does, so a whole image through
  bioimageio.core gives aeatrain's prediction. The input's declared padding is the
  constant -1 (pixels are >= 0), which the network recognises and cuts off: the halo
  bioimageio.core pads around a whole image does not change the result. The output halo
  is the convolutions' measured receptive radius rounded up to the sampling grid, so
  consumers that tile crop every cut edge away. AEANet's attention is image-global: a
  tiled prediction uses each tile's attention summary instead of the whole image's (the
  package README says so);
- pre/postprocessing as the spec's operations: ``scale_linear`` by 1 / (2^bits - 1) to
  [0, 1], then ``clip`` to [0, 1] and ``scale_linear`` back to the input's range;
- test tensors cut from the run's own test data at the run's bit depth (an input tile and
  the package's output), a cover (input | output), a README with the "# Validation"
  section (training, the dataset's split and the run's evaluation if
  ``RUN/eval/metrics.json`` exists), citations, authors, license.

``--name`` and ``--license`` are checked before any work. The description is validated by
``bioimageio.spec`` and the finished zip read back by it BEFORE it is renamed onto
``--out``: a failed export leaves nothing. ``--overwrite`` replaces only a package this
command wrote (``config.aeatrain`` in its rdf.yaml). bioimageio.spec and onnx are the
optional ``export`` extra (``pip install 'aeatrain[export]'``); without them this command
says so in one line."""

from __future__ import annotations

import argparse
import copy
import getpass
import importlib.util
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aeatrain import __version__
from aeatrain.errors import UserError, run_cli
from aeatrain.imageio import (
    atomic_path,
    encode_image,
    from_float,
    max_value,
    to_float,
    unit_scale,
)
from aeatrain.inference import padding_multiple
from aeatrain.models import model_spec
from aeatrain.modelzoo import STATE_DICT
from aeatrain.outputs import AEATRAIN_PACKAGE, check_replaceable_file, check_writable
from aeatrain.protocol.metrics import read_metrics

log = logging.getLogger(__name__)

ONNX_OPSET = 17  # onnxruntime 1.13 (deepImageJ's engine) reads opset <= 17 ...
ONNX_IR_VERSION = 8  # ... and IR <= 8; torch's TorchScript-based exporter writes both
OUTSIDE = -1.0  # the package's padding value: pixels are >= 0, so a frame of it is padding
MAX_TEST_SIZE = 128  # side of the test tensors (px), at most (or the minimum size if larger)
INPUT_ID, OUTPUT_ID = "lr", "sr"
EXPORT_EXTRA = "pip install 'aeatrain[export]'"
PAPER_CITE = (
    "Xie, Ding, Ji: Augmented Equivariant Attention Networks for Microscopy Image "
    "Transformation. IEEE Transactions on Medical Imaging, 2022 (arXiv:2011.03633).",
    "https://arxiv.org/abs/2011.03633",
)
CODE_CITE = (
    f"aeatrain {__version__}: the PyTorch training toolkit that trained and exported this "
    "model, a re-implementation of the published AEANets code (divelab/AEANets).",
    "https://github.com/divelab/AEANets",
)


class ExportError(UserError):
    """An export that cannot be done as asked; the message names the file or option."""


@dataclass
class Geometry:
    """The package's sizes and halo, in pixels of the HR grid.

    Any height and width from ``min_size`` on (step 1): the packaged network pads to its
    own multiple inside (:class:`PackagedNetwork`). ``halo``: the convolutions' measured
    receptive radius rounded up to ``multiple`` (the network's sampling grid), so blocks
    whose inner size is a multiple of ``multiple`` stay on the grid."""

    multiple: int  # the network's input_multiple (4: U-Net family, 1: VDSR/EDSR/RCAN)
    pad_multiple: int  # what the network pads to, as aeatrain.inference does (16)
    halo: int
    radius: int  # the measured receptive radius the halo covers

    @property
    def min_size(self) -> int:
        """Both halos plus one padded block: the spec wants ``min - 2 * halo >= 1``."""
        return 2 * self.halo + self.pad_multiple

    def largest_size(self, limit: int) -> int:
        """``limit`` if it is a valid size (:class:`ExportError` when it is too small)."""
        if limit < self.min_size:
            raise ExportError(
                f"the run's test images ({limit} px) are smaller than the package's minimum "
                f"size {self.min_size} px (twice the halo {self.halo} + {self.pad_multiple})"
            )
        return limit


class PackagedNetwork(nn.Module):
    """The network as the package runs it: ``aeatrain.inference.predict_full`` in one module.

    The input may carry a frame of negative pixels (the package declares a constant
    padding of :data:`OUTSIDE`; its pixel values are >= 0): that frame is what a consumer
    added around the image or the block (bioimageio.core pads a whole image by the halo),
    and it is cut off first. What is left is reflect-padded at the bottom and right to
    ``pad_multiple`` and run, exactly as aeatrain predicts a whole image; the output is
    cropped back and stretched over the frame again (edge values, which the consumer
    crops as the halo). So a whole image through bioimageio.core equals aeatrain's own
    prediction, and a block with real context around it (tiling) uses that context.
    """

    def __init__(self, network: nn.Module, pad_multiple: int):
        super().__init__()
        self.network = network
        self.pad_multiple = pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) -> (N, 1, H, W)
        inside = x >= 0
        rows = torch.nonzero(inside.any(3).any(1).any(0))[:, 0]  # (h,) rows of the image
        cols = torch.nonzero(inside.any(2).any(1).any(0))[:, 0]  # (w,)
        image = x.index_select(2, rows).index_select(3, cols)  # (N, 1, h, w)
        h, w = image.shape[2], image.shape[3]
        m = self.pad_multiple
        padded = F.pad(image, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        y = self.network(padded)[:, :, :h, :w]  # (N, 1, h, w)
        along_y = (torch.arange(x.shape[2]) - rows[0]).clamp(0, h - 1)  # (H,)
        along_x = (torch.arange(x.shape[3]) - cols[0]).clamp(0, w - 1)  # (W,)
        return y.index_select(2, along_y).index_select(3, along_x)  # (N, 1, H, W)


# ---------------------------------------------------------------------------- checks


def _require_export_packages() -> None:
    """bioimageio.spec and onnx, or one line saying how to get them (found, not imported:
    onnx is imported when the weights are written, after every check)."""
    missing = []
    for module in ("bioimageio.spec", "onnx"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            missing.append(module)
    if missing:
        raise ExportError(f"export needs {', '.join(missing)}: {EXPORT_EXTRA}")


def check_target(out: Path, *, overwrite: bool) -> None:
    """Refuse a target that is not a .zip, exists (without ``overwrite``), is not a
    bioimage.io package of ours to replace, or lies in a folder we cannot write."""
    if out.suffix.lower() != ".zip":
        raise ExportError(f"{out}: --out must name a .zip file (a bioimage.io package)")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; --out must name a .zip file")
    check_replaceable_file(out, overwrite=overwrite, kind=AEATRAIN_PACKAGE)
    check_writable(out.parent, "--out")  # the folder the zip goes into


def load_network(run_dir: str, weights: str):
    """The run's float32 network in eval mode and its RunInfo; refuses non-networks."""
    from aeatrain.models import MODELS, trainable_names
    from aeatrain.run.final import RUN_JSON, load_run, read_run_json

    name = read_run_json(run_dir).model.name
    if name not in MODELS or not MODELS[name].trainable:  # lbnlm: a library built from data
        raise ExportError(
            f"{Path(run_dir) / RUN_JSON}: model {name!r} is not a trained neural network "
            f"({', '.join(trainable_names())}); a bioimage.io package holds network weights"
        )
    model, run = load_run(run_dir, weights=weights, device="cpu")
    if len(set(run.bit_depths)) != 1:
        raise ExportError(
            f"{Path(run_dir) / RUN_JSON}: trained on {sorted(set(run.bit_depths))}-bit data; "
            f"a package scales its input by one bit depth"
        )
    return model.float().eval(), run


# ---------------------------------------------------------------------------- geometry


def receptive_radius(model: nn.Module) -> int:
    """Pixels an output depends on in each direction, through the convolutions.

    A network of stride-1 convolutions only (VDSR, EDSR, RCAN): the sum of the kernels'
    half-widths, exact for a chain with additive skips. The U-Net family (strided and
    transposed convolutions, skips across levels): measured, see :func:`_probed_radius`.
    Global operators (attention, channel attention's pooling) are left out on purpose:
    they span the whole image or tile by design.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    if all(isinstance(m, nn.Conv2d) and m.stride == (1, 1) for m in convs):
        return sum((m.kernel_size[0] - 1) // 2 * m.dilation[0] for m in convs)
    return _probed_radius(model, multiple=model.input_multiple)


def _probed_radius(model: nn.Module, *, multiple: int, size: int = 192) -> int:
    """The receptive radius of a copy whose BatchNorms are identities, whose convolutions
    have small positive kernels and whose attention output projection is zero: every
    structural connection then carries a positive gradient (no ReLU6 saturates)."""
    probe = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()  # weight 1, bias 0
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                module.weight.copy_(module.weight.abs() * 0.01 + 1e-3)
                if module.bias is not None:
                    module.bias.zero_()
        attention = getattr(probe, "attention", None)
        if attention is not None:
            attention.out_proj.weight.zero_()
            attention.out_proj.bias.zero_()
    x = torch.full((1, 1, size, size), 0.5, requires_grad=True)
    out = probe(x)
    radius = 0
    centre = size // 2
    for offset in range(multiple):  # every phase of the sampling grid
        c = centre + offset
        (grad,) = torch.autograd.grad(out[0, 0, c, c], x, retain_graph=True)
        rows, cols = torch.nonzero(grad[0, 0] != 0, as_tuple=True)
        radius = max(radius, int((rows - c).abs().max()), int((cols - c).abs().max()))
    if radius >= centre - multiple:
        raise AssertionError(f"receptive field reaches the probe's edge ({size} px): enlarge it")
    return radius


def geometry_of(model: nn.Module) -> Geometry:
    multiple = model.input_multiple
    radius = receptive_radius(model)
    halo = -(-radius // multiple) * multiple  # rounded up: blocks stay on the grid
    return Geometry(multiple, padding_multiple(model), halo, radius)


# ---------------------------------------------------------------------------- test data


def cut_test_input(run, data: str | None, geometry: Geometry) -> tuple[np.ndarray, str, str]:
    """The top-left square of the run's first test tile: (S, S) uint8|uint16, a label, and
    the dataset's split in words (for the README)."""
    from aeatrain.data.manifest import load_manifest
    from aeatrain.data.streams import full_images, test_tiles

    root = data or run.dataset.get("path")
    if not root:
        raise ExportError(f"{run.path}: run.json names no dataset; pass --data DATA")
    if not Path(root).exists():
        raise ExportError(
            f"{root}: the run's dataset is not there any more; pass --data DATA (the test "
            f"tensors are cut from its test tiles)"
        )
    manifest = load_manifest(root, verify_checksums=False)
    tile = next(iter(test_tiles(manifest, pairs=run.train_pairs)), None)
    if tile is None:
        raise ExportError(f"{root}: holds no test tile of the run's pairs")
    if tile.bit_depth != run.bit_depths[0]:
        raise ExportError(
            f"{root}: its test images are {tile.bit_depth}-bit and the run was trained on "
            f"{run.bit_depths[0]}-bit data; pass --data with the run's dataset (the package's "
            f"test tensors must be at the bit depth its scaling expects)"
        )
    limit = max(MAX_TEST_SIZE, geometry.min_size)
    if min(tile.lr.shape) >= geometry.min_size:
        lr, where = tile.lr, f"pair {tile.pair}, {tile.tile_id}"
    else:  # a large receptive field (RCAN): cut from the whole registered image
        image = next(iter(full_images(manifest, pairs=[tile.pair])))
        lr, where = image.lr, f"pair {tile.pair}, whole registered image"
    size = geometry.largest_size(min(*lr.shape, limit))
    label = f"{where}, top-left {size} x {size} px"
    return np.ascontiguousarray(lr[:size, :size]), label, split_text(manifest, run.train_pairs)


def split_text(manifest, pairs: list[str] | None) -> str:
    """Where the test tiles of ``pairs`` (None: all) lie, from the manifest, e.g. "outside
    the training region columns [0, 960), rows [0, 944) of each 1280 x 944 pair"."""
    regions: dict[tuple, list[str]] = {}
    for name in pairs or manifest.pair_names:
        info = manifest.pairs[name]
        box = info["train_region"]
        key = (info["width"], info["height"], box["x0"], box["x1"], box["y0"], box["y1"])
        regions.setdefault(key, []).append(name)
    parts = []
    for (width, height, x0, x1, y0, y1), names in sorted(regions.items()):
        which = "each" if len(regions) == 1 else ", ".join(names) + ":"
        parts.append(f"columns [{x0}, {x1}), rows [{y0}, {y1}) of {which} {width} x {height} pair")
    return "outside the training region " + "; ".join(parts)


def model_input(lr: np.ndarray, bit_depth: int) -> torch.Tensor:
    """(1, 1, S, S) float32: ``aeatrain.imageio.to_float``, the conversion training used,
    which is what the package's ``scale_linear`` by ``unit_scale(bits)`` computes."""
    return torch.from_numpy(to_float(lr, bit_depth))[None, None]


def predict_tensor(network: PackagedNetwork, lr: np.ndarray, bit_depth: int) -> np.ndarray:
    """What the package's pipeline computes: scale, network, clip, scale back. (1, 1, S, S)."""
    top = float(max_value(bit_depth))
    x = model_input(lr, bit_depth)
    with torch.inference_mode():
        y = network(x).clamp(0.0, 1.0) * top
    return y.numpy().astype(np.float32)


def cover_png(lr: np.ndarray, sr: np.ndarray, bit_depth: int) -> bytes:
    """Input | output side by side, 8 bit, a 2:1 picture."""
    top = float(max_value(bit_depth))
    left = from_float(lr.astype(np.float64) / top, 8)
    right = from_float(sr.astype(np.float64) / top, 8)
    return encode_image(np.concatenate([left, right], axis=1), ".png")


# ---------------------------------------------------------------------------- weights


def write_weights(network: PackagedNetwork, folder: Path, example: torch.Tensor) -> dict:
    """TorchScript (traced) and ONNX of ``network`` (eval mode) in ``folder``, and the bare
    network's state dict (for ``train.init_from``)."""
    import onnx

    paths = {
        "torchscript": folder / "weights_torchscript.pt",
        "onnx": folder / "weights.onnx",
        "state_dict": folder / STATE_DICT,
    }
    state = network.network.state_dict()
    torch.save({k: v.contiguous() for k, v in state.items()}, paths["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit deprecation; shape checks traced as constants
        traced = torch.jit.trace(network, example, check_trace=False)
        traced.save(str(paths["torchscript"]))
        # The TorchScript-based exporter (dynamo=False): the dynamo one writes IR 10 and
        # opset >= 18, which deepImageJ's onnxruntime cannot read.
        torch.onnx.export(
            network,
            (example,),
            str(paths["onnx"]),
            input_names=[INPUT_ID],
            output_names=[OUTPUT_ID],
            opset_version=ONNX_OPSET,
            dynamic_axes={name: {0: "batch", 2: "y", 3: "x"} for name in (INPUT_ID, OUTPUT_ID)},
            dynamo=False,
        )
    written = onnx.load(str(paths["onnx"]))
    opsets = {entry.domain: entry.version for entry in written.opset_import}
    if written.ir_version > ONNX_IR_VERSION or opsets.get("", 0) > ONNX_OPSET:
        raise AssertionError(
            f"torch.onnx.export wrote IR {written.ir_version}, opsets {opsets}: above "
            f"IR {ONNX_IR_VERSION} / opset {ONNX_OPSET}"
        )
    return paths


# ---------------------------------------------------------------------------- description


@dataclass
class PackageInfo:
    """What the user says about the package (CLI flags) and where its pieces come from."""

    name: str
    authors: list[str]
    license: str
    weights_kind: str
    sample_label: str
    split: str  # where the test tiles lie, in words


def build_description(run, geometry: Geometry, files: dict[str, Path], info: PackageInfo):
    """The bioimage.io ModelDescr (format 0.5), validated with IO checks on ``files``."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as spec

    inputs, outputs = _tensor_descrs(spec, run, geometry, files)
    with ValidationContext(root=files["readme"].parent, perform_io_checks=True):
        return spec.ModelDescr(
            format_version=spec.ModelDescr.implemented_format_version,
            type="model",
            name=info.name,
            description=f"{run.model_name} super-resolution x{run.scale:g} of SEM images "
            f"(AEANet family, trained with aeatrain)",
            authors=[spec.Author(name=name) for name in info.authors],
            cite=[
                spec.CiteEntry(text=PAPER_CITE[0], url=spec.HttpUrl(PAPER_CITE[1])),
                spec.CiteEntry(text=CODE_CITE[0], url=spec.HttpUrl(CODE_CITE[1])),
            ],
            license=info.license,
            documentation=spec.FileDescr(source=files["readme"]),
            covers=[spec.FileDescr(source=files["cover"])],
            tags=["super-resolution", "electron-microscopy", "sem", "2d", "pytorch", "aeanet"],
            inputs=[inputs],
            outputs=[outputs],
            weights=_weights_descr(spec, run, files, info),
            attachments=[spec.FileDescr(source=files["state_dict"])],
            version="0.1.0",
            config={
                "aeatrain": {  # our mark (--overwrite), and what train.init_from reads
                    "version": __version__,
                    "run": run.path.name,
                    "step": run.step,
                    "weights": info.weights_kind,
                    "scale": run.scale,
                    "bit_depth": run.bit_depths[0],
                    "model": {"name": run.model_name, "kwargs": run.model_kwargs},
                    "state_dict": STATE_DICT,
                }
            },
        )


def _tensor_descrs(spec, run, geometry: Geometry, files: dict[str, Path]) -> tuple:
    """Input ``lr`` and output ``sr``: axes, sizes, halo, data range, pre/postprocessing."""
    bits = run.bit_depths[0]
    top = float(max_value(bits))
    size = spec.ParameterizedSize(min=geometry.min_size, step=1)
    channel = spec.ChannelAxis(channel_names=[spec.Identifier("sem")])
    input_axes = [
        spec.BatchAxis(),
        channel,
        *(spec.SpaceInputAxis(id=spec.AxisId(axis), size=size) for axis in ("y", "x")),
    ]
    output_axes = [
        spec.BatchAxis(),
        channel,
        *(
            spec.SpaceOutputAxisWithHalo(
                id=spec.AxisId(axis),
                size=spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=axis),
                halo=geometry.halo,
            )
            for axis in ("y", "x")
        ),
    ]
    pixels = spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, top))
    inputs = spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID),
        description=f"LR image bicubic-upsampled x{run.scale:g} to the HR pixel grid, "
        f"{run.bit_depths[0]}-bit values 0..{top:g}",
        axes=input_axes,
        test_tensor=spec.FileDescr(source=files["test_input"]),
        sample_tensor=spec.FileDescr(source=files["sample_input"]),
        data=pixels,
        pad=spec.ConstantPadding(value=OUTSIDE),
        preprocessing=[
            spec.ScaleLinearDescr(
                kwargs=spec.ScaleLinearKwargs(gain=float(unit_scale(bits)), offset=0.0)
            )
        ],
    )
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID),
        description=f"super-resolved image on the input's grid and scale (0..{top:g})",
        axes=output_axes,
        test_tensor=spec.FileDescr(source=files["test_output"]),
        sample_tensor=spec.FileDescr(source=files["sample_output"]),
        data=pixels,
        postprocessing=[
            spec.ClipDescr(kwargs=spec.ClipKwargs(min=0.0, max=1.0)),
            spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=top, offset=0.0)),
        ],
    )
    return inputs, outputs


def _weights_descr(spec, run, files: dict[str, Path], info: PackageInfo):
    """TorchScript and ONNX of the packaged network: both run without aeatrain."""
    source = f"{info.weights_kind} weights of {run.path.name} at step {run.step}"
    return spec.WeightsDescr(
        torchscript=spec.TorchscriptWeightsDescr(
            source=files["torchscript"],
            pytorch_version=spec.Version(torch.__version__.split("+")[0]),
            comment=f"torch.jit.trace of the eval-mode network with its padding; {source}",
        ),
        onnx=spec.OnnxWeightsDescr(
            source=files["onnx"],
            opset_version=ONNX_OPSET,
            comment=f"torch.onnx.export (TorchScript-based), IR {ONNX_IR_VERSION}, dynamic "
            f"batch, height and width; {source}",
        ),
    )


def _validation_text(run, sample_label: str, split: str) -> list[str]:
    """The README's "# Validation" section: training, and the run's evaluation if any."""
    cfg = run.config
    data, optim, train = (cfg.get(k) or {} for k in ("data", "optim", "train"))
    pairs = ", ".join(run.train_pairs) if run.train_pairs else "every pair (pooled)"
    lines = [
        "# Validation",
        "",
        f"Trained with aeatrain {__version__} (`aeatrain/train.py`): {run.step} steps of Adam "
        f"(learning rate {optim.get('lr')}, loss {optim.get('loss')}), global batch "
        f"{data.get('global_batch_size')}, {data.get('crop_size')} px crops, on {pairs} of the "
        f"dataset `{run.dataset.get('path')}` (manifest sha256 "
        f"`{run.dataset.get('manifest_sha256')}`). Seed {train.get('seed')}.{_origin(run)}",
        "",
    ]
    metrics = run.path / "eval" / "metrics.json"
    summary = _evaluation_summary(metrics, run.path)
    if summary is None:
        lines.append(
            "The run had not been evaluated when it was exported (no `RUN/eval/metrics.json`): "
            "score it with `python -m aeatrain.evaluate --run RUN --data DATA` and export again."
        )
    else:
        lines += [
            "Scored with the published protocol (`python -m aeatrain.evaluate`) on the test "
            f"tiles ({split}): gains over the registered bicubic input, averaged over tiles "
            "then pairs.",
            "",
            "| dPSNR (dB) | dSSIM | PSNR (dB) | SSIM | tiles |",
            "|---|---|---|---|---|",
            f"| {summary['dpsnr']:.3f} | {summary['dssim']:.4f} | {summary['psnr']:.3f} | "
            f"{summary['ssim']:.4f} | {summary['tiles']} |",
        ]
    lines += [
        "",
        f"Test tensors: {sample_label} of the run's test data; the test output is this "
        "package's own prediction of it (`bioimageio test MODEL.zip` reproduces it with "
        "every weight format).",
        "",
    ]
    return lines


def _origin(run) -> str:
    """A sentence naming the weights a fine-tuned run started from (train.init_from); or ''."""
    from aeatrain.run.final import read_run_json

    source = read_run_json(run.path).init_from
    if not source:
        return ""
    step = f" at step {source['step']}" if source.get("step") is not None else ""
    return (
        f" Started from the {source.get('weights')} weights of `{source.get('path')}`{step} "
        f"(train.init_from), with a fresh optimizer."
    )


def _evaluation_summary(path: Path, run_dir: Path) -> dict | None:
    """The summary of ``run_dir``'s row in an aeatrain metrics.json, with its tile count;
    None when the file is absent, unreadable or scores other runs only."""
    try:
        rows = read_metrics(path).rows
    except UserError:
        return None
    for row in rows:
        if any(Path(r.path).resolve() == run_dir.resolve() for r in row.runs):
            if any(row.summary.get(key) is None for key in _SUMMARY_KEYS):
                return None
            summary = {key: float(row.summary[key]) for key in _SUMMARY_KEYS}
            summary["tiles"] = sum(len(pair.tiles) for pair in row.pairs.values())
            return summary
    return None


_SUMMARY_KEYS = ("dpsnr", "dssim", "psnr", "ssim")


def readme_text(run, geometry: Geometry, info: PackageInfo) -> str:
    """The package's README.md: what goes in and out, why, how it was trained and scored."""
    top = max_value(run.bit_depths[0])
    scale = f"{run.scale:g}"
    spec = model_spec(run.model_name)
    lines = [
        f"# {info.name}",
        "",
        f"`{run.model_name}`, {spec.summary} ({run.model_kwargs}), trained with aeatrain on "
        f"paired SEM images "
        f"(magnification M and {scale}M): it turns an LR image into an image of HR quality. "
        f"Exported from the run folder `{run.path.name}` ({info.weights_kind} weights, step "
        f"{run.step}) by `python -m aeatrain.export`.",
        "",
        "## Input and output",
        "",
        f"- **Input `{INPUT_ID}`**: the LR image ALREADY UPSAMPLED x{scale} (bicubic) to the HR "
        f"pixel grid, one channel, {run.bit_depths[0]}-bit values 0..{top}. In Fiji: "
        f"Image > Scale... (x {scale}, y {scale}, interpolation Bicubic); in Python: "
        f"`cv2.resize(lr, None, fx={scale}, fy={scale}, interpolation=cv2.INTER_CUBIC)`. Cut "
        f"the SEM data bar off first.",
        f"- **Output `{OUTPUT_ID}`**: the super-resolved image, same size and scale (0..{top}).",
        f"- Sizes: any height and width from {geometry.min_size} px on. The network pads "
        f"the image itself, as aeatrain does (reflected at the bottom and right to a "
        f"multiple of {geometry.pad_multiple}), so a whole image gives aeatrain's own "
        f"prediction. A frame of negative pixels around the input (the package's padding "
        f"value {OUTSIDE:g}) is taken as padding and cut off first.",
        f"- Output halo {geometry.halo} px: the convolutions' receptive radius, "
        f"{geometry.radius} px, rounded up to the network's sampling grid "
        f"({geometry.multiple} px). A tool that tiles crops it off each cut edge; with "
        f"blocks whose size minus twice the halo is a multiple of {geometry.multiple}, and "
        f"image sides that are too (bioimageio.core shifts the last block to end at the "
        f"edge), the tiled prediction equals the whole-image one (up to the global part "
        f"below, if the model has one).",
        f"- Fine-tuning: `{STATE_DICT}` (an attachment) is the network's state dict; "
        f"aeatrain's `train.init_from MODEL.zip` starts a run from it.",
        "",
        "Why the input is at HR size and not the raw LR image: the network was trained on the "
        "registered LR image warped into the HR frame by bicubic interpolation, so feeding it "
        "the bicubic-upsampled image is exactly its training input; and a model whose output "
        "lies on its input's pixel grid is the case that deepImageJ, napari (bioimageio.core) "
        "and ilastik all tile and overlay without scale arithmetic. An upsampling traced into "
        "the weights would also follow TorchScript's and ONNX's own border rules, not "
        "OpenCV's bicubic that aeatrain's `predict` and training data use.",
        "",
    ]
    if spec.global_context:
        lines += [
            f"{spec.global_context} is global: every output pixel depends "
            "on a summary of the whole input tensor, which the halo cannot cover. Predicting "
            "the whole image in one piece matches aeatrain's whole-image prediction; a tool "
            "that tiles uses each tile's own summary, which changes the output, most near "
            "the image's edges. "
            "Give the whole image where memory allows.",
            "",
        ]
    lines += [
        "Pre/postprocessing (the spec's operations, applied by the consumer): "
        f"`scale_linear` gain 1/{top} -> network -> `clip` [0, 1] -> `scale_linear` gain {top}.",
        "",
        *_validation_text(run, info.sample_label, info.split),
        "## Cite",
        "",
        f"- {PAPER_CITE[0]} {PAPER_CITE[1]}",
        f"- {CODE_CITE[0]}",
        "",
    ]
    return "\n".join(lines)


def package_pieces(model: nn.Module, run, args, folder: Path) -> tuple[Geometry, dict, PackageInfo]:
    """Write every file the package holds into ``folder``; returns what describes them."""
    from aeatrain.run.final import finite_output

    geometry = geometry_of(model)
    lr, label, split = cut_test_input(run, args.data, geometry)
    depth = run.bit_depths[0]
    network = PackagedNetwork(model, geometry.pad_multiple).eval()
    sr = finite_output(predict_tensor(network, lr, depth), run.path)
    files = {
        "test_input": folder / "test_input.npy",
        "test_output": folder / "test_output.npy",
        "sample_input": folder / "sample_input.png",
        "sample_output": folder / "sample_output.png",
        "cover": folder / "cover.png",
        "readme": folder / "README.md",
    }
    np.save(files["test_input"], lr.astype(np.float32)[None, None])  # (1, 1, S, S)
    np.save(files["test_output"], sr)
    files["sample_input"].write_bytes(encode_image(lr, ".png"))
    files["sample_output"].write_bytes(
        encode_image(from_float(sr[0, 0] / max_value(depth), depth), ".png")
    )
    files["cover"].write_bytes(cover_png(lr, sr[0, 0], depth))
    example = model_input(lr, depth)
    files.update(write_weights(network, folder, example))
    info = PackageInfo(
        name=args.name,
        authors=args.author,
        license=args.license,
        weights_kind=run.weights_kind,
        sample_label=label,
        split=split,
    )
    files["readme"].write_text(readme_text(run, geometry, info), encoding="utf-8")
    return geometry, files, info


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment (some containers)
        raise ExportError("cannot tell your user name: pass --author NAME") from None


def describe(run, geometry: Geometry, files: dict, info: PackageInfo):
    """:func:`build_description`, with a description the spec rejects as one line."""
    from pydantic import ValidationError

    try:
        return build_description(run, geometry, files, info)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ExportError(f"the package description is invalid: {where}: {first['msg']}") from None


def save_package(descr, out: Path, *, overwrite: bool) -> None:
    """Zip the package beside ``out``, read it back with bioimageio.spec, then rename it."""
    from bioimageio.spec import InvalidDescr, load_model_description, save_bioimageio_package

    try:
        with atomic_path(out, overwrite=overwrite) as tmp:
            tmp.unlink()  # bioimageio.spec writes the zip itself
            save_bioimageio_package(descr, output_path=tmp)
            back = load_model_description(tmp, format_version=str(descr.format_version))
            if isinstance(back, InvalidDescr):
                raise AssertionError(f"bioimageio.spec rejects the package it wrote:\n{back}")
    except OSError as err:
        raise ExportError(f"{out}: cannot write ({err.strerror or err})") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run", required=True, help="run folder (model.safetensors, run.json)")
    parser.add_argument("--out", required=True, help="the package to write, MODEL.zip")
    parser.add_argument(
        "--weights", choices=("auto", "raw", "ema"), default="auto", help="auto: EMA if any"
    )
    parser.add_argument(
        "--data", help="DATA folder to cut the test tensors from (default: the run's dataset)"
    )
    parser.add_argument(
        "--name",
        help="package name: ASCII letters, digits, _+- () (default: aeatrain MODEL RUN, "
        "other characters replaced by _)",
    )
    parser.add_argument(
        "--author",
        action="append",
        help="an author's name; repeat for several (default: your user name)",
    )
    parser.add_argument(
        "--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a package this command wrote (never any other file)",
    )
    return parser.parse_args(argv)


def default_name(model_name: str, run_dir: str) -> str:
    """``aeatrain MODEL RUN`` with every character the spec does not allow in a name (it
    takes ASCII letters, digits, ``_+- ()``) replaced by ``_``, at most 64 characters."""
    folder = Path(run_dir).resolve().name
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "_", f"aeatrain {model_name} {folder}")[:NAME_LENGTH]


def check_metadata(args: argparse.Namespace) -> None:
    """Refuse a ``--name``/``--license`` the spec rejects before any work (one line each);
    fill in the default name and author."""
    from bioimageio.spec.model.v0_5 import ModelDescr
    from pydantic import TypeAdapter, ValidationError

    from aeatrain.run.final import read_run_json

    if args.name is None:
        model_name = read_run_json(args.run).model.name
        args.name = default_name(str(model_name), args.run)
    for option, value in (("--name", args.name), ("--license", args.license)):
        field = ModelDescr.model_fields[option[2:]]
        try:
            TypeAdapter(Annotated[(field.annotation, *field.metadata)]).validate_python(value)
        except ValidationError:
            raise ExportError(f"{option} {value!r}: {METADATA_RULES[option]}") from None
    args.author = args.author or [_user_name()]


NAME_LENGTH = 64  # bioimage.io wants a name of at most 64 characters (128 at the very most)
METADATA_RULES = {
    "--name": "a package name has 5 to 128 characters, ASCII letters, digits and _+- () only",
    "--license": "not an SPDX license identifier bioimage.io accepts (e.g. CC-BY-4.0, MIT, "
    "BSD-3-Clause; https://spdx.org/licenses)",
}


def export(args: argparse.Namespace) -> Path:
    """Check the target, the options and the run, build every piece, validate, write
    ``args.out``."""
    out = Path(args.out)
    check_target(out, overwrite=args.overwrite)
    _require_export_packages()
    check_metadata(args)
    model, run = load_network(args.run, args.weights)
    with tempfile.TemporaryDirectory(prefix="aeatrain-export-") as folder:
        geometry, files, info = package_pieces(model, run, args, Path(folder))
        descr = describe(run, geometry, files, info)
        save_package(descr, out, overwrite=args.overwrite)
    log.info(
        "%s: %s (%s weights, step %d), sizes from %d px, halo %d (receptive radius %d)",
        out, run.model_name, run.weights_kind, run.step, geometry.min_size, geometry.halo,
        geometry.radius,
    )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export(parse_args(argv))
    print(f"wrote {out}; check it with: bioimageio test {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
