"""The package's description: rdf.yaml (bioimage.io model format 0.5, validated by
bioimageio.spec) and its README, with the run's training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aeatrain import __version__
from aeatrain.errors import UserError
from aeatrain.files.images import max_value, unit_scale
from aeatrain.models import model_spec
from aeatrain.modelzoo import (
    INPUT_ID,
    ONNX_IR_VERSION,
    ONNX_OPSET,
    OUTPUT_ID,
    OUTSIDE,
    STATE_DICT,
    ExportError,
)
from aeatrain.modelzoo.network import Geometry
from aeatrain.protocol.metrics import read_metrics
from aeatrain.run.final import read_run_json

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


def describe(run, geometry: Geometry, files: dict, info: PackageInfo):
    """:func:`build_description`, with a description the spec rejects as one line."""
    from pydantic import ValidationError

    try:
        return build_description(run, geometry, files, info)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ExportError(f"the package description is invalid: {where}: {first['msg']}") from None
