"""Training and evaluation feed the model bit-identical inputs for the same pixels.

The training path is ``aeatrain.data.loader.train_loader``'s batch (what the trainer hands the
model); the evaluation path is what ``aeatrain.protocol.scoring.predict_image`` hands the model
for the whole registered image, caught by a model that records its input. Both go
through ``aeatrain.files.images.to_float``; these tests fail if either path converts by itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aeatrain.data.loader import train_loader
from aeatrain.data.manifest import load_manifest
from aeatrain.data.streams import full_images
from aeatrain.files.images import to_float, unit_scale
from aeatrain.protocol.scoring import Tiling, predict_image
from tests.datasets import make_dataset, split_regions, write_dataset

WIDTH, HEIGHT = 320, 280  # train region 240 x 280 = 67,200 pixels: every 16-bit value fits


class RecordingModel(nn.Module):
    """The identity, keeping every input it is given."""

    input_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # tells inference the device
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return x


def every_value_pair(bit_depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(lr, hr) whose train region (the left 240 columns) holds every value of the depth."""
    top = (1 << bit_depth) - 1
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    code = (yy * 240 + xx) % (top + 1)  # row-major over the train region: each value once
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return code.astype(dtype), (top - code).astype(dtype)


def evaluation_input(root, pair: str) -> torch.Tensor:
    """The (H, W) float32 the evaluation path hands the model for ``pair``'s whole image."""
    image = next(iter(full_images(load_manifest(root), pairs=[pair])))
    model = RecordingModel()
    predict_image(model, image.lr, Tiling(), device=None)
    (x,) = model.inputs  # (1, 1, Hp, Wp): the image, reflect-padded
    return x[0, 0, : image.lr.shape[0], : image.lr.shape[1]]


def pixels_under_crop(batch: dict, i: int, full: torch.Tensor) -> torch.Tensor:
    """The full-image pixels under crop ``i`` of ``batch`` (its origin is in the region)."""
    train, _ = split_regions(WIDTH, HEIGHT)
    x0, y0, op = (int(v) for v in batch["crop"][i])
    assert op == 0  # no augmentation: the crop is the pixels as stored
    height, width = batch["lr"].shape[-2:]
    top, left = train["y0"] + y0, train["x0"] + x0
    return full[top : top + height, left : left + width]


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_every_value_is_the_same_float32_in_training_and_evaluation(tmp_path, bit_depth):
    root = write_dataset(tmp_path / "D", {"codes": every_value_pair(bit_depth)})
    batch = next(train_loader(root, crop_size=None, batch_size=1, seed=0))
    lr = batch["lr"][0, 0]  # (280, 240): the whole train region
    evaluated = pixels_under_crop(batch, 0, evaluation_input(root, "codes"))
    assert lr.dtype == evaluated.dtype == torch.float32
    assert torch.equal(lr, evaluated)  # bit for bit, not approximately
    values = every_value_pair(bit_depth)[0][: lr.shape[0], : lr.shape[1]]
    assert len(np.unique(values)) == 1 << bit_depth  # really every value
    assert np.array_equal(lr.numpy(), to_float(values, bit_depth))
    # The conversion is the product with the package's gain; it is not x / 255 for all.
    as_product = values.astype(np.float32) * unit_scale(bit_depth)
    assert np.array_equal(lr.numpy(), as_product)
    as_quotient = values.astype(np.float32) / np.float32((1 << bit_depth) - 1)
    assert (lr.numpy() != as_quotient).any()


def test_a_random_training_crop_is_bit_identical_to_the_evaluated_pixels(tmp_path):
    root = make_dataset(tmp_path / "D", pairs=2, width=WIDTH, height=HEIGHT, seed=4)
    batch = next(train_loader(root, crop_size=64, batch_size=4, seed=5))
    origins = {tuple(c[:2].tolist()) for c in batch["crop"]}
    assert len(origins) > 1 and origins != {(0, 0)}  # crops from inside the region
    full = {pair: evaluation_input(root, pair) for pair in sorted(set(batch["pair"]))}
    for i, pair in enumerate(batch["pair"]):
        evaluated = pixels_under_crop(batch, i, full[pair])
        assert torch.equal(batch["lr"][i, 0], evaluated)
