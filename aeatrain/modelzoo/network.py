"""The network as the package runs it (:class:`PackagedNetwork`: aeatrain's whole-image
padding inside), its sizes and halo (:class:`Geometry`) and its TorchScript and ONNX weights."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aeatrain.files.images import max_value, to_float
from aeatrain.modelzoo import (
    INPUT_ID,
    ONNX_IR_VERSION,
    ONNX_OPSET,
    OUTPUT_ID,
    STATE_DICT,
    ExportError,
)
from aeatrain.protocol.inference import padding_multiple


@dataclass
class Geometry:
    """The package's sizes and halo, in pixels of the HR grid.

    Any height and width from ``min_size`` on (step 1): the packaged network pads to its
    own multiple inside (:class:`PackagedNetwork`). ``halo``: the convolutions' measured
    receptive radius rounded up to ``multiple`` (the network's sampling grid), so blocks
    whose inner size is a multiple of ``multiple`` stay on the grid."""

    multiple: int  # the network's input_multiple (4: U-Net family, 1: VDSR/EDSR/RCAN)
    pad_multiple: int  # what the network pads to, as aeatrain.protocol.inference does (16)
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
    """The network as the package runs it: ``protocol.inference.predict_full`` in one module.

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


def model_input(lr: np.ndarray, bit_depth: int) -> torch.Tensor:
    """(1, 1, S, S) float32: ``aeatrain.files.images.to_float``, the conversion training used,
    which is what the package's ``scale_linear`` by ``unit_scale(bits)`` computes."""
    return torch.from_numpy(to_float(lr, bit_depth))[None, None]


def predict_tensor(network: PackagedNetwork, lr: np.ndarray, bit_depth: int) -> np.ndarray:
    """What the package's pipeline computes: scale, network, clip, scale back. (1, 1, S, S)."""
    top = float(max_value(bit_depth))
    x = model_input(lr, bit_depth)
    with torch.inference_mode():
        y = network(x).clamp(0.0, 1.0) * top
    return y.numpy().astype(np.float32)


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
