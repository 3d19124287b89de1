"""What a package holds besides its weights: test tensors cut from the run's own test data
(where the protocol's split put them), the cover, and every file written into a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from aeatrain.files.images import encode_image, from_float, max_value
from aeatrain.modelzoo import ExportError
from aeatrain.modelzoo.description import PackageInfo, readme_text
from aeatrain.modelzoo.network import (
    Geometry,
    PackagedNetwork,
    geometry_of,
    model_input,
    predict_tensor,
    write_weights,
)
from aeatrain.run.final import finite_output

MAX_TEST_SIZE = 128  # side of the test tensors (px), at most (or the minimum size if larger)


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
        box = info.train_region
        key = (info.width, info.height, box.x0, box.x1, box.y0, box.y1)
        regions.setdefault(key, []).append(name)
    parts = []
    for (width, height, x0, x1, y0, y1), names in sorted(regions.items()):
        which = "each" if len(regions) == 1 else ", ".join(names) + ":"
        parts.append(f"columns [{x0}, {x1}), rows [{y0}, {y1}) of {which} {width} x {height} pair")
    return "outside the training region " + "; ".join(parts)


def cover_png(lr: np.ndarray, sr: np.ndarray, bit_depth: int) -> bytes:
    """Input | output side by side, 8 bit, a 2:1 picture."""
    top = float(max_value(bit_depth))
    left = from_float(lr.astype(np.float64) / top, 8)
    right = from_float(sr.astype(np.float64) / top, 8)
    return encode_image(np.concatenate([left, right], axis=1), ".png")


def package_pieces(
    model: nn.Module,
    run,
    folder: Path,
    *,
    data: str | None,
    name: str,
    authors: list[str],
    license: str,
) -> tuple[Geometry, dict, PackageInfo]:
    """Write every file the package holds into ``folder``; returns what describes them.
    ``data``: the DATA folder to cut the test tensors from (None: the run's dataset)."""
    geometry = geometry_of(model)
    lr, label, split = cut_test_input(run, data, geometry)
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
        name=name,
        authors=authors,
        license=license,
        weights_kind=run.weights_kind,
        sample_label=label,
        split=split,
    )
    files["readme"].write_text(readme_text(run, geometry, info), encoding="utf-8")
    return geometry, files, info
