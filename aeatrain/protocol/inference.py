"""Running a trained model on whole images: padded, tiled-and-blended, or paper-tiled.

Three ways to predict an image (float (H, W) in [0, 1], the registered/upsampled LR):

- :func:`predict_full`: the whole image at once, reflect-padded to a multiple of 16 and
  cropped back (the published ``PadAndCropResizer``). This is the paper's evaluation.
- :func:`predict_tiled` (:func:`tiled_rows` streams it in row bands, so memory does not
  grow with the image's height): overlapping tiles blended with a smooth window, for
  images too large for memory. The window ignores the outer quarter of each overlap (where a tile's
  cut edge corrupts its prediction) and crossfades with a raised cosine over the middle
  half, so no seams show; for a convolutional network whose receptive-field radius is at
  most ``overlap // 4`` the result equals :func:`predict_full` to float rounding.
- :func:`predict_paper_tiles`: the published ``crop_predict`` used for the patch-size
  study (paper Fig. 7): tiles of size s, each predicted on its own, and only its centre
  (all but a margin of 32 px of context on inner sides) kept; no blending.

Any of them can be wrapped in the D4 self-ensemble (:func:`self_ensemble`, ``--tta d4``;
the "+" of EDSR): the image is predicted in each of its 8 flips/rotations (the D4 group,
aeatrain/data/d4.py), each prediction is transformed back, and the 8 are averaged.

Padding goes at the bottom and right only (the published code splits it over both
sides). The network samples on a stride-4 grid; anchoring that grid at pixel (0, 0) for
every image and every tile is what makes tiles agree with the whole image. On the paper's
1280 x 944 images no padding is needed, so both conventions give the same numbers.

Models are plain ``nn.Module``s mapping (N, 1, H, W) in [0, 1] to the same shape, H and W
multiples of the model's ``input_multiple`` (padding reaches it: :func:`padding_multiple`). Every function here runs the model in eval mode without gradients, then
restores the mode it found (the trainer calls these during training). On the CPU, large
enough forward passes run in onnxruntime (:func:`cpu_session`), to float32 rounding the
same numbers, several times faster than eager PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from aeatrain.data import d4
from aeatrain.errors import UserError
from aeatrain.files.images import to_float
from aeatrain.models.srnets import EDSR, RCAN, VDSR
from aeatrain.models.unet import UNet

log = logging.getLogger(__name__)

PAD_MULTIPLE = 16  # the published code pads to 2 ** (depth + 1) = 16
DEFAULT_BATCH = 4  # tiles per forward pass (tiled_rows: on GPUs)
MIN_TILE_STEP = 16  # px between paper tiles: a 1-2 px step means ~10^5 tiles per image
TTA_MODES = ("none", "d4")  # test-time augmentation: none, or the 8-fold D4 self-ensemble


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def autocast_to_weights(model: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast to the model's weight dtype when its weights are 16-bit (DeepSpeed keeps
    bf16/fp16 module weights; training validates and draws them in place), so a float32
    input meets matching weights; a float32 model runs as it is. The one way inference
    meets 16-bit weights: scoring (``predict_image``) and the reference maps use it."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    return torch.autocast(parameter.device.type, dtype=parameter.dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no gradients inside; the model's previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def padding_multiple(model: nn.Module, multiple: int = PAD_MULTIPLE) -> int:
    """What an image is padded to for ``model``: ``multiple`` (the published 16) made a
    multiple of the model's declared ``input_multiple`` too (a model without one takes
    any size). 16 for every model here (input multiples 4 and 1)."""
    return math.lcm(multiple, getattr(model, "input_multiple", 1))


def pad_to_multiple(image: np.ndarray, multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """Reflect-pad (H, W) at the bottom and right up to multiples of ``multiple``.

    NumPy's reflect repeats the reflection when the pad is longer than the image, so any
    image of at least one pixel can be padded: tiny inputs are padded, not refused.
    """
    h, w = image.shape
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-pixel axis has nothing to mirror
    return np.pad(image, ((0, pad_h), (0, pad_w)), mode=mode)


def _run_batch(
    model: nn.Module, images: list[np.ndarray], device: torch.device, multiple: int
) -> list[np.ndarray]:
    """Predict same-shaped (h, w) float images in one forward pass; crops the padding off.

    Pads to :func:`padding_multiple` of ``multiple``: never below the model's own. On the
    CPU, a forward pass large enough to pay for it runs in onnxruntime (:func:`cpu_session`).
    """
    h, w = images[0].shape
    multiple = padding_multiple(model, multiple)
    padded = np.stack([pad_to_multiple(image, multiple) for image in images])  # (N, Hp, Wp)
    padded = np.ascontiguousarray(padded[:, None], dtype=np.float32)  # (N, 1, Hp, Wp)
    session = cpu_session(model, padded.size) if device.type == "cpu" else None
    if session is not None:
        y = torch.from_numpy(session.run(None, {"image": padded})[0])  # (N, 1, Hp, Wp)
    else:
        y = model(torch.from_numpy(padded).to(device))  # (N, 1, Hp, Wp)
    out = y[:, 0, :h, :w].float().cpu().numpy()  # (N, h, w)
    return list(out)


# ------------------------------------------------------------ the CPU backend
ONNX_MIN_WORK = 5 * 10**10  # parameters x pixels of a forward pass from which onnxruntime pays
_ONNX_MODELS = (UNet, VDSR, EDSR, RCAN)
_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (key, session)


def cpu_session(model: nn.Module, pixels: int):
    """The onnxruntime session that runs ``model`` (in eval mode) on the CPU, or None
    where the model stays in PyTorch.

    onnxruntime fuses what eager PyTorch runs op by op (BatchNorm folded into the
    convolutions, activations into them, NCHWc blocked layouts) and ran our networks
    faster on the same threads (docs/benchmarks.md). Its outputs equal PyTorch's to
    float32 rounding (about 1e-7). Exporting and optimising the graph takes seconds, so a
    forward pass of fewer than :data:`ONNX_MIN_WORK` parameters x pixels (tests' small
    models, a published-size network on less than 252 x 252 px) stays in PyTorch, as do
    models other than the U-Net family, VDSR, EDSR and RCAN, 16-bit weights, passes under
    autocast, and everything when onnx/onnxruntime are not installed or
    ``AEATRAIN_ONNXRUNTIME=0``. The session is kept
    while the weights stay the same (training's validation exports again after each
    optimiser step); it uses PyTorch's number of threads.
    """
    if not isinstance(model, _ONNX_MODELS) or os.environ.get("AEATRAIN_ONNXRUNTIME") == "0":
        return None
    tensors = [*model.parameters(), *model.buffers()]
    if sum(t.numel() for t in tensors) * pixels < ONNX_MIN_WORK:
        return None
    if torch.is_autocast_enabled("cpu") or any(
        p.dtype != torch.float32 for p in model.parameters()
    ):
        return None  # 16-bit weights (DeepSpeed) or autocast: PyTorch's dtypes, not ours
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime
    except ImportError:
        return None
    key = (torch.get_num_threads(), *((t.data_ptr(), t._version) for t in tensors))
    cached = _sessions.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    start = time.perf_counter()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(
        _onnx_bytes(model), options, providers=["CPUExecutionProvider"]
    )
    _sessions[model] = (key, session)
    log.info(
        "%s runs in onnxruntime on %d CPU thread(s) (exported in %.1f s)",
        type(model).__name__,
        options.intra_op_num_threads,
        time.perf_counter() - start,
    )
    return session


def _onnx_bytes(model: nn.Module) -> bytes:
    """``model`` in eval mode as ONNX (opset 17, traced; batch, height and width dynamic)."""
    buffer = io.BytesIO()
    side = 2 * padding_multiple(model)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks and deprecation
        example = torch.zeros(1, 1, side, side, device=_model_device(model))
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["prediction"],
            dynamic_axes={name: {0: "n", 2: "h", 3: "w"} for name in ("image", "prediction")},
        )
    return buffer.getvalue()


def _predict_many(
    model: nn.Module,
    images: list[np.ndarray],
    *,
    device: torch.device,
    multiple: int,
    batch_size: int,
) -> list[np.ndarray]:
    """Predict a list of images, batching those of equal shape; results in input order."""
    results: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            outputs = _run_batch(model, [images[i] for i in chunk], device, multiple)
            for index, output in zip(chunk, outputs):
                results[index] = output
    return results  # type: ignore[return-value]


def check_image_shape(image: np.ndarray) -> None:
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty (H, W) image, got shape {image.shape}")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    check_image_shape(image)
    return image.astype(np.float32, copy=False)


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` given: move the model there; None: run where the model already is."""
    if device is None:
        return _model_device(model)
    device = torch.device(device)
    model.to(device)
    return device


def predict_full(
    model: nn.Module,
    lr: np.ndarray,
    *,
    multiple: int = PAD_MULTIPLE,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Predict a whole (H, W) float image in [0, 1]; returns float32 (H, W), not clipped.

    Reflect-pads to a multiple of ``multiple`` (bottom/right) and crops back. ``device``
    None runs where the model is; a device moves the model there first.
    """
    lr = _check_image(lr)
    device = _resolve_device(model, device)
    with eval_mode(model):
        return _run_batch(model, [lr], device, multiple)[0]


def _window_1d(length: int, *, lead: bool, trail: bool, overlap: int) -> np.ndarray:
    """Blend weights along one axis of a tile: 0 -> 1 ramps at cut edges (lead/trail).

    The outer ``trim = overlap // 4`` pixels of a cut edge get weight 0: there the tile's
    prediction has seen the cut. The next ``overlap - 2 * trim`` pixels rise as
    sin^2, so two tiles overlapping by exactly ``overlap`` sum to 1 (sin^2 + cos^2).
    """
    trim = overlap // 4
    ramp = overlap - 2 * trim
    distance = np.arange(length, dtype=np.float64)  # pixels from the leading edge
    weights = np.ones(length, dtype=np.float64)
    for is_cut, d in ((lead, distance), (trail, distance[::-1])):
        if not is_cut or overlap == 0:
            continue
        rising = np.sin(0.5 * math.pi * np.clip((d - trim + 0.5) / ramp, 0.0, 1.0)) ** 2
        weights *= np.where(d < trim, 0.0, rising)
    return weights


def tile_spans(length: int, *, tile: int, overlap: int, align: int = PAD_MULTIPLE) -> list:
    """``[(start, stop), ...]`` covering ``[0, length)`` with tiles of ``tile`` px.

    Starts are multiples of ``tile - overlap`` (itself a multiple of ``align``), so every
    tile sits on the network's sampling grid. The last tile starts at the last aligned
    position that still leaves it ``tile`` px (it may be up to ``align - 1`` px longer),
    so it is never a thin sliver with little context.
    """
    if length <= tile:
        return [(0, length)]
    last = ((length - tile) // align) * align
    stride = tile - overlap
    spans = [(start, start + tile) for start in range(0, last, stride)]
    spans.append((last, length))
    return spans


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 2 * PAD_MULTIPLE or tile % PAD_MULTIPLE:
        raise UserError(f"--tile {tile}: must be a multiple of {PAD_MULTIPLE}, at least 32")
    if overlap < 0 or overlap % PAD_MULTIPLE or 2 * overlap > tile:
        raise UserError(
            f"--overlap {overlap}: must be a multiple of {PAD_MULTIPLE} between 0 and "
            f"half the tile ({tile // 2})"
        )


def predict_tiled(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Predict a (H, W) image in overlapping tiles blended without seams; float32 (H, W).

    The bands of :func:`tiled_rows` put together (see there for ``image``, ``tile`` and
    ``overlap``).
    """
    bands = tiled_rows(
        model, image, tile=tile, overlap=overlap, device=device, batch_size=batch_size
    )
    return np.concatenate(list(bands))


def tiled_rows(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> Iterator[np.ndarray]:
    """Predict a (H, W) image in overlapping tiles and yield the result as it is finished:
    float32 row bands, top to bottom, that put together are the (H, W) prediction.

    ``image``: float in [0, 1], or an integer image (cut and converted with
    :func:`~aeatrain.files.images.to_float` a tile at a time, so no float copy of it exists),
    which may be a :class:`~aeatrain.files.rows.LazyRows`: its rows are then read one row of
    tiles at a time.
    ``tile`` and ``overlap`` are multiples of 16, ``overlap <= tile / 2``. Each tile is
    predicted on its own (padded like :func:`predict_full` where it meets the image's
    bottom/right edge) and added, weighted by :func:`_window_1d`, into a float32 band one
    row of tiles high; the rows no later tile reaches are divided by the summed weights
    and yielded. Memory is set by the tile size and the image width, not its height.
    ``batch_size`` tiles per forward pass; None: :data:`DEFAULT_BATCH` on a GPU, one on the
    CPU, where batching did not pay and multiplied the memory (docs/benchmarks.md).
    """
    check_tiling(tile, overlap)
    check_image_shape(image)
    device = _resolve_device(model, device)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else DEFAULT_BATCH
    h, w = image.shape
    rows = tile_spans(h, tile=tile, overlap=overlap)
    cols = tile_spans(w, tile=tile, overlap=overlap)
    # The tiles form a grid, so the summed weight of pixel (y, x) is row_sum[y] * col_sum[x].
    row_windows = [
        _window_1d(r1 - r0, lead=r0 > 0, trail=r1 < h, overlap=overlap) for r0, r1 in rows
    ]
    col_windows = [
        _window_1d(c1 - c0, lead=c0 > 0, trail=c1 < w, overlap=overlap) for c0, c1 in cols
    ]
    row_sum, col_sum = np.zeros(h, dtype=np.float32), np.zeros(w, dtype=np.float32)
    for (r0, r1), window in zip(rows, row_windows):
        row_sum[r0:r1] += window
    for (c0, c1), window in zip(cols, col_windows):
        col_sum[c0:c1] += window
    if not ((row_sum > 0).all() and (col_sum > 0).all()):
        raise AssertionError("tile windows leave pixels uncovered; tile_spans/_window_1d bug")
    band = np.empty((max(r1 - r0 for r0, r1 in rows), w), dtype=np.float32)
    carried = 0  # rows at the top of ``band`` that earlier tiles already added to
    with eval_mode(model):
        for index, ((r0, r1), wy) in enumerate(zip(rows, row_windows)):
            band[carried : r1 - r0] = 0  # band[i] holds row r0 + i
            rows_in = np.asarray(image[r0:r1])  # a view; a LazyRows image reads it here
            for start in range(0, len(cols), batch_size):
                chunk = cols[start : start + batch_size]
                tiles = [_float_tile(rows_in[:, c0:c1]) for c0, c1 in chunk]
                preds = _predict_many(
                    model, tiles, device=device, multiple=PAD_MULTIPLE, batch_size=batch_size
                )
                for (c0, c1), wx, pred in zip(chunk, col_windows[start:], preds):
                    weight = (wy[:, None] * wx[None, :]).astype(np.float32)  # (tile_h, tile_w)
                    band[: r1 - r0, c0:c1] += weight * pred
            done = rows[index + 1][0] if index + 1 < len(rows) else h  # later tiles start here
            finished = band[: done - r0] / col_sum
            finished /= row_sum[r0:done, None]
            yield finished
            carried = r1 - done
            band[:carried] = band[done - r0 : r1 - r0]  # the overlap, to the top


def _float_tile(tile: np.ndarray) -> np.ndarray:
    """A tile of the image as float32 in [0, 1] (integer images: ``to_float``)."""
    if np.issubdtype(tile.dtype, np.integer):
        return to_float(tile)
    return tile.astype(np.float32, copy=False)


def check_paper_tiling(tile: int, margin: int) -> None:
    """Refuse paper tiles that leave no centre, or step by less than :data:`MIN_TILE_STEP`."""
    if tile <= 2 * margin:
        raise UserError(f"tile {tile}: must exceed twice the margin ({2 * margin})")
    step = tile - 2 * margin
    if step < MIN_TILE_STEP:
        raise UserError(
            f"tile {tile}: with margin {margin} the tiles step by {step} px, below the "
            f"minimum of {MIN_TILE_STEP} px (a tile of at least {2 * margin + MIN_TILE_STEP})"
        )


def paper_tile_spans(length: int, *, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """The published ``get_coord`` along one axis: ``(src0, src1, keep0, keep1)`` per tile.

    Tiles step by ``tile - 2 * margin``; the last one is flush with the image end. Each
    keeps ``[keep0, keep1)`` (image coordinates): all of it except ``margin`` px on every
    side that has a neighbour. A tile longer than the axis is cut to the axis (the
    published code would index before the image start there).
    """
    tile = min(tile, length)
    step = tile - 2 * margin
    if step <= 0:
        raise UserError(f"--tile {tile}: must exceed twice the margin ({2 * margin})")
    count = math.ceil((length - tile) / step)
    spans = []
    for i in range(count + 1):
        start = i * step if i < count else length - tile
        left = margin if i > 0 else 0
        right = margin if i < count else 0
        spans.append((start, start + tile, start + left, start + tile - right))
    return spans


def predict_paper_tiles(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile: int,
    margin: int = 32,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """The paper's patch-size protocol: predict s x s tiles, keep each one's centre.

    Later tiles overwrite earlier ones where kept regions overlap, as in the published
    ``crop_predict``. Tiles are streamed: ``batch_size`` at a time are cut, predicted and
    written into the result (every tile has the same shape, so the batches are the ones
    a whole list would give). Returns float32 (H, W).
    """
    image = _check_image(image)
    check_paper_tiling(tile, margin)
    device = _resolve_device(model, device)
    h, w = image.shape
    rows = paper_tile_spans(h, tile=tile, margin=margin)
    cols = paper_tile_spans(w, tile=tile, margin=margin)
    boxes = [(r, c) for c in cols for r in rows]  # published order: columns outer
    out = np.empty((h, w), dtype=np.float32)
    with eval_mode(model):
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            tiles = [image[r[0] : r[1], c[0] : c[1]] for r, c in chunk]  # views, same shape
            for (r, c), pred in zip(chunk, _run_batch(model, tiles, device, PAD_MULTIPLE)):
                keep = (slice(r[2] - r[0], r[3] - r[0]), slice(c[2] - c[0], c[3] - c[0]))
                out[r[2] : r[3], c[2] : c[3]] = pred[keep]
    return out


# --------------------------------------------------------------- D4 self-ensemble
def self_ensemble(
    predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tta: str = "none"
) -> np.ndarray:
    """``predict(image)`` (``tta`` "none"), or its D4 self-ensemble (``tta`` "d4").

    d4: the mean of the 8 predictions ``d4.transform(predict(d4.transform(image, op)),
    d4.inverse(op))`` over the ops of aeatrain/data/d4.py in order, summed in float64 and
    divided by 8; float32 out.
    One transformed prediction is held at a time (8x the compute, not 8x the memory).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
    if tta == "none":
        return predict(image)
    total = np.zeros(image.shape, dtype=np.float64)
    for op in range(d4.ORDER):
        moved = np.ascontiguousarray(d4.transform(image, op))  # a view otherwise
        total += d4.transform(predict(moved), d4.inverse(op))
    return (total / d4.ORDER).astype(np.float32)
