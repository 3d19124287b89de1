"""Validation during training: the paper's dPSNR/dSSIM on the test tiles (DESIGN.md section 5).

Each process scores the test tiles the loader hands it (tile i to rank i % world_size) and
returns plain dicts; the trainer gathers them from every rank and :func:`summarize`
averages them the paper's way (over the tiles of a pair, then over pairs), refusing
duplicates. A tile is predicted whole (reflect-padded to a multiple of 16 and cropped
back, as the published evaluation predicts whole images); the full protocol, with whole
registered images and tiling, is ``aeatrain.evaluate``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from aeatrain.imageio import to_float
from aeatrain.inference import predict_full
from aeatrain.metrics import average_pairs, mean_scores, score_tile

SUMMARY_KEYS = ("dpsnr", "dssim", "psnr", "ssim", "input_psnr", "input_ssim")


def predict_tile(model: nn.Module, lr: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float32 (H, W) prediction of an integer LR tile, in eval mode without gradients.

    A model whose weights are 16-bit (DeepSpeed keeps bf16/fp16 module weights) runs
    under autocast to its own dtype, so a float32 input meets matching weights.
    """
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype in (torch.bfloat16, torch.float16)
        else contextlib.nullcontext()
    )
    with autocast:
        return predict_full(model, to_float(lr, bit_depth))


def score_tiles(model: nn.Module, tiles: Iterable) -> list[dict]:
    """One dict per tile (pair, tile_id, index and every TileScores figure)."""
    results = []
    for tile in tiles:
        prediction = predict_tile(model, tile.lr, tile.bit_depth)
        scores = score_tile(prediction, tile.lr, tile.hr, bit_depth=tile.bit_depth)
        results.append(
            {"pair": tile.pair, "tile_id": tile.tile_id, "index": tile.index, "scores": scores}
        )
    return results


def summarize(results: Iterable[dict]) -> dict[str, float]:
    """Average gathered tile results: over the tiles of each pair, then over pairs.

    Raises ValueError on a tile seen twice: the ranks' shares must not overlap.
    """
    by_pair: dict[str, dict] = defaultdict(dict)
    for result in results:
        tiles = by_pair[result["pair"]]
        if result["tile_id"] in tiles:
            raise ValueError(f"tile {result['pair']}/{result['tile_id']} was scored twice")
        tiles[result["tile_id"]] = result["scores"]
    if not by_pair:
        raise ValueError("no test tiles were scored")
    means = average_pairs({pair: mean_scores(tiles) for pair, tiles in by_pair.items()})
    summary = {key: float(means[key]) for key in SUMMARY_KEYS}
    summary["tiles"] = float(sum(len(tiles) for tiles in by_pair.values()))
    return summary
