"""aeatrain.protocol.inference: padding, tile layouts, and tiled == whole for a convolutional U-Net.

Why tiles can equal the whole image exactly: the "unet" baseline is convolutions plus
BatchNorm, and BatchNorm in eval mode is a fixed per-channel affine map, so the network is
translation-equivariant for shifts that keep its stride-4 sampling grid (tile starts are
multiples of 16) and an output pixel depends only on inputs within its receptive-field
radius. The blend window gives weight 0 to the outer ``overlap // 4`` pixels at every cut
edge, so when that trim is at least the radius every pixel that counts was predicted from
exactly the context the whole image gives it: the bound is float rounding (1e-5).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from aeatrain.errors import UserError
from aeatrain.models import build_model
from aeatrain.protocol import inference


def _unet(seed: int = 0, channels: int = 8) -> torch.nn.Module:
    """A "unet" whose BatchNorm statistics are not the identity (as after training)."""
    torch.manual_seed(seed)
    model = build_model("unet", base_channels=channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def receptive_radius(model: torch.nn.Module, size: int = 160) -> int:
    """Largest offset at which an input impulse changes the output (4 grid phases)."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    radius = 0
    with torch.no_grad():
        base = model(x)
        for r, c in ((80, 80), (81, 81), (82, 83), (83, 82)):
            poked = x.clone()
            poked[0, 0, r, c] += 1.0
            rows, cols = torch.nonzero((model(poked) - base)[0, 0].abs() > 0, as_tuple=True)
            reach = torch.cat([(rows - r).abs(), (cols - c).abs()]).max().item()
            radius = max(radius, int(reach))
    return radius


def test_unet_receptive_radius_is_within_the_default_trim():
    radius = receptive_radius(_unet())
    assert 24 <= radius <= 32  # measured: 30 px; the default overlap 128 trims 32
    assert radius <= 128 // 4


def test_tiled_equals_whole_image_for_the_unet_within_float_rounding():
    model = _unet()
    image = np.random.default_rng(0).random((301, 437), dtype=np.float32)  # not multiples of 16
    whole = inference.predict_full(model, image)
    tiled = inference.predict_tiled(model, image, tile=256, overlap=128, batch_size=3)
    assert whole.shape == tiled.shape == image.shape and tiled.dtype == np.float32
    assert len(inference.tile_spans(437, tile=256, overlap=128)) >= 3  # really tiled
    max_diff = float(np.abs(tiled - whole).max())
    assert max_diff < 1e-5, max_diff


def test_too_small_overlap_does_show_the_tile_edges():
    """The bound above is not vacuous: with a trim (8) below the radius (30) it breaks."""
    model = _unet()
    image = np.random.default_rng(0).random((200, 300), dtype=np.float32)
    whole = inference.predict_full(model, image)
    tiled = inference.predict_tiled(model, image, tile=96, overlap=32)
    assert float(np.abs(tiled - whole).max()) > 1e-3


def test_predict_full_pads_crops_and_restores_training_mode():
    model = _unet()
    model.train()
    image = np.random.default_rng(1).random((37, 50), dtype=np.float32)
    out = inference.predict_full(model, image)
    assert out.shape == (37, 50) and out.dtype == np.float32
    assert model.training  # mode restored
    padded = inference.pad_to_multiple(image, 16)
    assert padded.shape == (48, 64)
    assert np.array_equal(padded[:37, :50], image)
    assert padded[37, 0] == image[35, 0]  # reflect (edge pixel not repeated), bottom only
    model.eval()
    with torch.no_grad():
        direct = model(torch.from_numpy(padded)[None, None])[0, 0, :37, :50].numpy()
    assert np.abs(out - direct).max() == 0


def test_tiny_images_are_padded_not_refused():
    model = _unet()
    for shape in ((1, 1), (2, 3), (5, 17)):
        out = inference.predict_full(model, np.full(shape, 0.5, np.float32))
        assert out.shape == shape and np.isfinite(out).all()


def test_tile_spans_are_aligned_and_cover_the_axis():
    for length in (100, 192, 193, 437, 944, 1280, 2047):
        spans = inference.tile_spans(length, tile=192, overlap=64)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(start % 16 == 0 for start, _ in spans)
        assert all(b0 < a1 for (_, a1), (b0, _) in itertools.pairwise(spans))  # overlapping
        assert all(stop - start >= min(192, length) for start, stop in spans)
    assert inference.tile_spans(437, tile=192, overlap=64) == [(0, 192), (128, 320), (240, 437)]


def test_blend_windows_of_neighbouring_tiles_sum_to_one():
    lead = inference._window_1d(192, lead=False, trail=True, overlap=64)
    trail = inference._window_1d(192, lead=True, trail=False, overlap=64)
    overlap_sum = lead[128:] + trail[:64]
    assert np.allclose(overlap_sum, 1.0, atol=1e-12)
    assert (lead[-16:] == 0).all() and (lead[:144] == 1).all()  # trim 16, ramp 32


def test_paper_tile_spans_match_the_published_get_coord():
    """Published: step s - 2m, last tile flush with the end, keep all but inner margins."""
    spans = inference.paper_tile_spans(944, tile=512, margin=32)
    assert spans == [(0, 512, 0, 480), (432, 944, 464, 944)]
    spans = inference.paper_tile_spans(1280, tile=256, margin=32)
    assert [s[0] for s in spans] == [0, 192, 384, 576, 768, 960, 1024]
    kept = [(k0, k1) for _, _, k0, k1 in spans]
    assert kept[0][0] == 0 and kept[-1][1] == 1280
    assert all(a1 >= b0 for (_, a1), (b0, _) in itertools.pairwise(kept))  # no gaps
    assert inference.paper_tile_spans(300, tile=512, margin=32) == [(0, 300, 0, 300)]


def test_paper_tiles_match_whole_image_where_tiles_sit_on_the_grid():
    """With margin 32 >= radius 30 every aligned tile's centre is exact; the flush last
    tile (start 944 - 512 = 432, on the stride-16 grid here) is exact as well."""
    model = _unet()
    image = np.random.default_rng(2).random((944, 160), dtype=np.float32)
    whole = inference.predict_full(model, image)
    tiled = inference.predict_paper_tiles(model, image, tile=512, margin=32)
    assert float(np.abs(tiled - whole).max()) < 1e-5


def test_bad_tiling_arguments_are_user_errors():
    model = _unet()
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(UserError, match="--tile 100"):
        inference.predict_tiled(model, image, tile=100, overlap=32)
    with pytest.raises(UserError, match="--overlap 96"):
        inference.predict_tiled(model, image, tile=128, overlap=96)
    with pytest.raises(UserError, match="twice the margin"):
        inference.predict_paper_tiles(model, np.zeros((200, 200), np.float32), tile=64, margin=32)
    with pytest.raises(UserError, match="tile 66: with margin 32 the tiles step by 2 px"):
        inference.predict_paper_tiles(model, np.zeros((200, 200), np.float32), tile=66, margin=32)
    with pytest.raises(UserError, match="step by 1 px, below the minimum of 16 px"):
        inference.predict_paper_tiles(model, np.zeros((200, 200), np.float32), tile=1, margin=0)
    inference.check_paper_tiling(80, 32)  # a step of 16 is enough


def test_streamed_paper_tiles_are_bitwise_the_whole_list_prediction():
    """Streaming changes no batch: all paper tiles share one shape, taken in box order."""
    model = _unet(seed=3)
    image = np.random.default_rng(3).random((203, 261), dtype=np.float32)
    tile, margin, batch = 96, 32, 3
    rows = inference.paper_tile_spans(203, tile=tile, margin=margin)
    cols = inference.paper_tile_spans(261, tile=tile, margin=margin)
    boxes = [(r, c) for c in cols for r in rows]
    with inference.eval_mode(model):
        preds = inference._predict_many(
            model, [image[r[0] : r[1], c[0] : c[1]] for r, c in boxes],
            device=torch.device("cpu"), multiple=16, batch_size=batch,
        )  # fmt: skip
    expected = np.empty_like(image)
    for (r, c), pred in zip(boxes, preds):
        expected[r[2] : r[3], c[2] : c[3]] = pred[
            r[2] - r[0] : r[3] - r[0], c[2] - c[0] : c[3] - c[0]
        ]
    got = inference.predict_paper_tiles(model, image, tile=tile, margin=margin, batch_size=batch)
    assert np.array_equal(got, expected)


class _NumpyCopy(torch.nn.Module):
    """Returns a copy of its input made by NumPy, so tracemalloc sees every output."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # puts the model on a device

    def forward(self, x):
        return torch.from_numpy(x.numpy().copy())


def test_paper_tiles_are_streamed_not_all_held():
    """944 x 1280 with tile 80, margin 32: 4,180 tiles (107 MB of predictions if kept)."""
    import tracemalloc

    image = np.random.default_rng(0).random((944, 1280), dtype=np.float32)  # 4.8 MB
    tracemalloc.start()
    try:
        out = inference.predict_paper_tiles(_NumpyCopy(), image, tile=80, margin=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, image)
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB"


# ------------------------------------------------------------ D4 self-ensemble
def test_tta_d4_is_exactly_the_mean_of_the_8_inverse_transformed_predictions():
    model = _unet(channels=4)
    image = np.random.default_rng(3).random((32, 48), dtype=np.float32)
    got = inference.self_ensemble(lambda x: inference.predict_full(model, x), image, "d4")
    total = np.zeros(image.shape, dtype=np.float64)
    preds = []
    for k, flip in [(k, f) for f in (False, True) for k in range(4)]:
        moved = np.ascontiguousarray(np.rot90(image[:, ::-1] if flip else image, k))
        back = np.rot90(inference.predict_full(model, moved), -k)
        preds.append(back[:, ::-1] if flip else back)
    for pred in preds:
        total += pred
    assert got.dtype == np.float32 and np.array_equal(got, (total / 8).astype(np.float32))
    plain = inference.predict_full(model, image)
    assert np.abs(got - plain).max() > 1e-4  # the U-Net is not D4-equivariant: it differs
    assert np.array_equal(inference.self_ensemble(lambda x: plain, image, "none"), plain)
    with pytest.raises(ValueError, match="tta"):
        inference.self_ensemble(lambda x: x, image, "d8")


def test_tiled_rows_come_band_by_band_and_equal_predict_tiled():
    """The bands (one per row of tiles, finished as the tiles move down) put together are
    the blend of every tile; an integer image gives what its to_float gives."""
    model = _unet(channels=4)
    image = np.random.default_rng(5).integers(0, 65536, (200, 150), dtype=np.uint16)
    bands = list(inference.tiled_rows(model, image, tile=96, overlap=32))
    # rows of tiles start at 0, 64, 96 (the last one flush): bands end where the next starts
    assert [len(band) for band in bands] == [64, 32, 104]
    whole = inference.predict_tiled(
        model, image.astype(np.float32) / np.float32(65535), tile=96, overlap=32
    )
    np.testing.assert_allclose(np.concatenate(bands), whole, atol=1e-6)


def test_onnxruntime_backend_equals_pytorch_and_follows_weight_changes(monkeypatch):
    """The CPU backend runs the same numbers as PyTorch (float rounding), and a session is
    rebuilt once the weights change in place, as an optimiser step changes them between
    two validations."""
    pytest.importorskip("onnxruntime")
    model = _unet(channels=4)
    image = np.random.default_rng(6).random((72, 100), dtype=np.float32)
    monkeypatch.setattr(inference, "ONNX_MIN_WORK", 10**30)
    torch_before = inference.predict_full(model, image)
    monkeypatch.setattr(inference, "ONNX_MIN_WORK", 0)
    onnx_before = inference.predict_full(model, image)
    assert inference.cpu_session(model, image.size) is inference.cpu_session(model, image.size)
    np.testing.assert_allclose(onnx_before, torch_before, atol=1e-5)
    with torch.no_grad():
        model.head.weight.mul_(-0.5)
    onnx_after = inference.predict_full(model, image)
    monkeypatch.setattr(inference, "ONNX_MIN_WORK", 10**30)
    torch_after = inference.predict_full(model, image)
    assert np.abs(torch_after - torch_before).max() > 0.01
    np.testing.assert_allclose(onnx_after, torch_after, atol=1e-5)
