"""Share a trained run as a BioImage Model Zoo package (bioimage.io model format 0.5).

    python -m aeatrain.export --run RUN --out MODEL.zip [--weights auto|raw|ema]
        [--data DATA] [--name NAME] [--author NAME ...] [--license SPDX] [--overwrite]

The package is what Fiji (deepImageJ), napari, ilastik and QuPath read (docs/export.md):

- weights in three formats: TorchScript (traced), ONNX (opset 18, dynamic batch, height
  and width) and ``pytorch_state_dict`` with the architecture ``aeatrain.models.build_model``
  (usable where aeatrain is installed);
- one input ``lr`` and one output ``sr``, axes (batch, channel, y, x). The input is the LR
  image ALREADY UPSAMPLED to the HR pixel grid (bicubic, by the run's scale): the network
  was trained on the registered LR warped into the HR frame, and a same-size model is the
  one every consumer tiles and overlays without scale arithmetic (docs/export.md says why);
- sizes ``min + n * step`` with step = the network's ``input_multiple`` (4 for the U-Net
  family, 1 for VDSR/EDSR/RCAN) and min the smallest multiple above twice the halo; the
  output halo covers the convolutional receptive field (rounded up to the step), so
  consumers that tile crop every cut edge away. AEANet's attention is image-global: a
  tiled prediction uses each tile's attention summary instead of the whole image's (the
  package README says so);
- pre/postprocessing as the spec's operations: ``scale_linear`` by 1 / (2^bits - 1) to
  [0, 1], then ``clip`` to [0, 1] and ``scale_linear`` back to the input's range;
- test tensors cut from the run's own test data (an input tile and the model's output),
  a cover (input | output), a README with the "# Validation" section (training and the
  run's evaluation if ``RUN/eval/metrics.json`` exists), citations, authors, license.

The description is validated by ``bioimageio.spec`` and the finished zip read back by it
BEFORE it is renamed onto ``--out``: a failed export leaves nothing. bioimageio.spec and
onnx are the optional ``export`` extra (``pip install 'aeatrain[export]'``); without them
this command says so in one line.
"""

from __future__ import annotations

import argparse
import copy
import getpass
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
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
from aeatrain.outputs import BIOIMAGE_PACKAGE, check_replaceable_file

log = logging.getLogger(__name__)

ONNX_OPSET = 18
MAX_TEST_SIZE = 128  # side of the test tensors (px), at most (or the minimum size if larger)
INPUT_ID, OUTPUT_ID = "lr", "sr"
GLOBAL_CONTEXT_MODELS = {  # models with an image-global part, and what it is
    "aeanet": "The bottom attention block",
    "gvtnet": "The bottom attention block",
    "rcan": "The channel attention (a mean over all pixels)",
}
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
    """Valid sizes ``min + n * step`` and the output halo, all in pixels of the HR grid."""

    step: int
    halo: int

    @property
    def min_size(self) -> int:
        """The smallest multiple of ``step`` that leaves output after cropping both halos."""
        return (2 * self.halo // self.step + 1) * self.step

    def largest_size(self, limit: int) -> int:
        """The largest valid size <= ``limit`` (:class:`ExportError` when none is)."""
        if limit < self.min_size:
            raise ExportError(
                f"the run's test images ({limit} px) are smaller than the package's minimum "
                f"size {self.min_size} px (twice the halo {self.halo} + {self.step})"
            )
        return self.min_size + (limit - self.min_size) // self.step * self.step


# ---------------------------------------------------------------------------- checks


def _require_export_packages() -> None:
    """bioimageio.spec, onnx and onnxscript, or one line saying how to get them."""
    missing = []
    for module in ("bioimageio.spec", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
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
    check_replaceable_file(out, overwrite=overwrite, kind=BIOIMAGE_PACKAGE)
    folder = _existing_ancestor(out.parent)
    if not folder.is_dir():
        raise ExportError(f"{out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{out}: cannot write into {folder} (permission denied)")


def _existing_ancestor(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def load_network(run_dir: str, weights: str):
    """The run's float32 network in eval mode and its RunInfo; refuses non-networks."""
    from aeatrain.models import TRAINABLE
    from aeatrain.runs import RUN_JSON, load_run, read_run_json

    name = (read_run_json(run_dir).get("model") or {}).get("name")
    if name not in TRAINABLE:  # lbnlm is a library built from data, not network weights
        raise ExportError(
            f"{Path(run_dir) / RUN_JSON}: model {name!r} is not a trained neural network "
            f"({', '.join(TRAINABLE)}); a bioimage.io package holds network weights"
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
    step = model.input_multiple
    halo = -(-receptive_radius(model) // step) * step  # rounded up: tiles stay on the grid
    return Geometry(step=step, halo=halo)


# ---------------------------------------------------------------------------- test data


def cut_test_input(run, data: str | None, geometry: Geometry) -> tuple[np.ndarray, str]:
    """The top-left square of the run's first test tile: (S, S) uint8|uint16, a label."""
    from aeatrain.data import full_images, load_manifest, test_tiles

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
    limit = max(MAX_TEST_SIZE, geometry.min_size)
    if min(tile.lr.shape) >= geometry.min_size:
        lr, where = tile.lr, f"pair {tile.pair}, {tile.tile_id}"
    else:  # a large receptive field (RCAN): cut from the whole registered image
        image = next(iter(full_images(manifest, pairs=[tile.pair])))
        lr, where = image.lr, f"pair {tile.pair}, whole registered image"
    size = geometry.largest_size(min(*lr.shape, limit))
    return np.ascontiguousarray(lr[:size, :size]), f"{where}, top-left {size} x {size} px"


def model_input(lr: np.ndarray, bit_depth: int) -> torch.Tensor:
    """(1, 1, S, S) float32: ``aeatrain.imageio.to_float``, the conversion training used,
    which is what the package's ``scale_linear`` by ``unit_scale(bits)`` computes."""
    return torch.from_numpy(to_float(lr, bit_depth))[None, None]


def predict_tensor(model: nn.Module, lr: np.ndarray, bit_depth: int) -> np.ndarray:
    """What the package's pipeline computes: scale, network, clip, scale back. (1, 1, S, S)."""
    top = float(max_value(bit_depth))
    x = model_input(lr, bit_depth)
    with torch.inference_mode():
        y = model(x).clamp(0.0, 1.0) * top
    return y.numpy().astype(np.float32)


def cover_png(lr: np.ndarray, sr: np.ndarray, bit_depth: int) -> bytes:
    """Input | output side by side, 8 bit, a 2:1 picture."""
    top = float(max_value(bit_depth))
    left = from_float(lr.astype(np.float64) / top, 8)
    right = from_float(sr.astype(np.float64) / top, 8)
    return encode_image(np.concatenate([left, right], axis=1), ".png")


# ---------------------------------------------------------------------------- weights


def write_weights(model: nn.Module, folder: Path, example: torch.Tensor) -> dict[str, Path]:
    """TorchScript (traced), ONNX and the state dict of ``model`` (eval mode) in ``folder``."""
    paths = {
        "torchscript": folder / "weights_torchscript.pt",
        "onnx": folder / "weights.onnx",
        "pytorch_state_dict": folder / "weights_state_dict.pt",
    }
    torch.save(
        {k: v.contiguous() for k, v in model.state_dict().items()}, paths["pytorch_state_dict"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit deprecation; shape checks traced as constants
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(paths["torchscript"]))
    dims = {
        0: torch.export.Dim("batch"),
        2: model.input_multiple * torch.export.Dim("y_steps"),
        3: model.input_multiple * torch.export.Dim("x_steps"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):  # per-pass INFO, torchvision
            logging.getLogger(noisy).setLevel(logging.ERROR)
        torch.onnx.export(
            model,
            (example,),
            str(paths["onnx"]),
            input_names=[INPUT_ID],
            output_names=[OUTPUT_ID],
            opset_version=ONNX_OPSET,
            dynamic_shapes=(dims,),
            dynamo=True,
            external_data=False,
            verbose=False,
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
            version="0.1.0",
            config={
                "aeatrain": {  # where the weights came from; train.init_from records it
                    "version": __version__,
                    "run": run.path.name,
                    "step": run.step,
                    "weights": info.weights_kind,
                    "scale": run.scale,
                    "bit_depth": run.bit_depths[0],
                }
            },
        )


def _tensor_descrs(spec, run, geometry: Geometry, files: dict[str, Path]) -> tuple:
    """Input ``lr`` and output ``sr``: axes, sizes, halo, data range, pre/postprocessing."""
    bits = run.bit_depths[0]
    top = float(max_value(bits))
    size = spec.ParameterizedSize(min=geometry.min_size, step=geometry.step)
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
    """The state dict (the original), and TorchScript and ONNX converted from it."""
    torch_version = spec.Version(torch.__version__.split("+")[0])
    return spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=files["pytorch_state_dict"],
            architecture=spec.ArchitectureFromLibraryDescr(
                import_from="aeatrain.models",
                callable=spec.Identifier("build_model"),
                kwargs={"name": run.model_name, **run.model_kwargs},
            ),
            pytorch_version=torch_version,
            comment=f"{info.weights_kind} weights of {run.path.name} at step {run.step}; "
            f"needs aeatrain importable",
        ),
        torchscript=spec.TorchscriptWeightsDescr(
            source=files["torchscript"],
            pytorch_version=torch_version,
            parent="pytorch_state_dict",
            comment="torch.jit.trace of the eval-mode network",
        ),
        onnx=spec.OnnxWeightsDescr(
            source=files["onnx"],
            opset_version=ONNX_OPSET,
            parent="pytorch_state_dict",
            comment="torch.onnx.export (dynamo), dynamic batch, height and width",
        ),
    )


def _validation_text(run, sample_label: str) -> list[str]:
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
            "tiles (columns [960, 1280) of each 1280-wide pair, the paper's split): gains over "
            "the registered bicubic input, averaged over tiles then pairs.",
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
    from aeatrain.runs import read_run_json

    source = read_run_json(run.path).get("init_from")
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
        document = json.loads(path.read_text(encoding="utf-8"))
        for row in document["rows"]:
            if any(Path(r["path"]).resolve() == run_dir.resolve() for r in row["runs"]):
                summary = {key: float(row["summary"][key]) for key in _SUMMARY_KEYS}
                summary["tiles"] = sum(len(pair["tiles"]) for pair in row["pairs"].values())
                return summary
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


_SUMMARY_KEYS = ("dpsnr", "dssim", "psnr", "ssim")


def readme_text(run, geometry: Geometry, info: PackageInfo) -> str:
    """The package's README.md: what goes in and out, why, how it was trained and scored."""
    top = max_value(run.bit_depths[0])
    scale = f"{run.scale:g}"
    lines = [
        f"# {info.name}",
        "",
        f"`{run.model_name}` ({run.model_kwargs}) trained with aeatrain on paired SEM images "
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
        f"- Sizes: height and width `{geometry.min_size} + n * {geometry.step}`; consumers "
        f"pad to that. Output halo {geometry.halo} px: when a tool tiles, it crops "
        f"{geometry.halo} px off each cut edge, which covers the convolutions' receptive "
        f"field.",
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
    if run.model_name in GLOBAL_CONTEXT_MODELS:
        lines += [
            f"{GLOBAL_CONTEXT_MODELS[run.model_name]} is global: every output pixel depends "
            "on a summary of the whole input tensor, which the halo cannot cover. Predicting "
            "the whole image in one piece matches aeatrain's whole-image prediction (up to "
            "the padding to a valid size); a tool that tiles uses each tile's own summary, "
            "which changes the output slightly. Give the whole image where memory allows.",
            "",
        ]
    lines += [
        "Pre/postprocessing (the spec's operations, applied by the consumer): "
        f"`scale_linear` gain 1/{top} -> network -> `clip` [0, 1] -> `scale_linear` gain {top}.",
        "",
        *_validation_text(run, info.sample_label),
        "## Cite",
        "",
        f"- {PAPER_CITE[0]} {PAPER_CITE[1]}",
        f"- {CODE_CITE[0]}",
        "",
    ]
    return "\n".join(lines)


def package_pieces(model: nn.Module, run, args, folder: Path) -> tuple[Geometry, dict, PackageInfo]:
    """Write every file the package holds into ``folder``; returns what describes them."""
    geometry = geometry_of(model)
    lr, label = cut_test_input(run, args.data, geometry)
    depth = run.bit_depths[0]
    sr = predict_tensor(model, lr, depth)
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
    files.update(write_weights(model, folder, example))
    info = PackageInfo(
        name=args.name or f"aeatrain {run.model_name} {run.path.name}",
        authors=args.author,
        license=args.license,
        weights_kind=run.weights_kind,
        sample_label=label,
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
    parser.add_argument("--name", help="package name (default: aeatrain MODEL RUN)")
    parser.add_argument(
        "--author",
        action="append",
        help="an author's name; repeat for several (default: your user name)",
    )
    parser.add_argument(
        "--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing bioimage.io package"
    )
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> Path:
    """Check the target and the run, build every piece, validate, write ``args.out``."""
    out = Path(args.out)
    check_target(out, overwrite=args.overwrite)
    args.author = args.author or [_user_name()]
    _require_export_packages()
    model, run = load_network(args.run, args.weights)
    with tempfile.TemporaryDirectory(prefix="aeatrain-export-") as folder:
        geometry, files, info = package_pieces(model, run, args, Path(folder))
        descr = describe(run, geometry, files, info)
        save_package(descr, out, overwrite=args.overwrite)
    log.info(
        "%s: %s (%s weights, step %d), sizes %d + n*%d, halo %d",
        out, run.model_name, run.weights_kind, run.step, geometry.min_size, geometry.step,
        geometry.halo,
    )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export(parse_args(argv))
    print(f"wrote {out}; check it with: bioimageio test {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
