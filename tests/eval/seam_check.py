"""Seam check for AEANet: tiled-and-blended vs whole-image prediction, with a picture.

    python -m tests.eval.seam_check [--steps 150] [--out docs/seams_aeanet.png]

AEANet's attention sees the whole input, so unlike the convolutional U-Net a tile's
prediction cannot equal the whole image's: tiling changes the context of every pixel. What
must hold is that no seam shows. This script briefly trains an AEANet (published size:
32 channels, 64 references) on synthetic specimen pairs so its attention is not random,
predicts a synthetic 768 x 1024 image whole and in tiles (256, overlap 128), and reports

- ``max_diff`` / ``mean_diff``: |tiled - whole| in 8-bit grey levels;
- ``seam_ratio``: the mean jump between neighbouring pixels ACROSS the tile cut lines of
  the tiled prediction divided by the same jump, at the same places, in the whole-image
  prediction: 1.0 means the cut lines are indistinguishable from anywhere else; a visible
  seam is a step, a ratio well above 1;

and the same figures for naive tiling (no overlap, no blending) as a contrast. It writes a
picture: whole | tiled | 10 x |tiled - whole| | naive tiles, around a tile corner.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aeatrain.files.images import from_float, to_float
from aeatrain.models import build_model
from aeatrain.protocol.inference import predict_full, predict_tiled, tile_spans
from tests.datasets import specimen_pair


def train_briefly(
    model: torch.nn.Module, *, steps: int, crop: int = 96, batch: int = 4, seed: int = 0
) -> float:
    """Adam + L1 on random crops of synthetic pairs (what train.py does, minus the rest)."""
    rng = np.random.default_rng(seed)
    pairs = [specimen_pair(rng, 480, 360, 8) for _ in range(4)]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        lrs, hrs = [], []
        for _ in range(batch):
            lr, hr = pairs[rng.integers(len(pairs))]
            y, x = rng.integers(0, 360 - crop), rng.integers(0, 480 - crop)
            lrs.append(to_float(lr[y : y + crop, x : x + crop]))
            hrs.append(to_float(hr[y : y + crop, x : x + crop]))
        x_batch = torch.from_numpy(np.stack(lrs))[:, None]  # (N, 1, crop, crop)
        y_batch = torch.from_numpy(np.stack(hrs))[:, None]
        loss = (model(x_batch) - y_batch).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return float(loss.detach())


def cut_lines(length: int, *, tile: int, overlap: int) -> list[int]:
    """Where a neighbouring tile takes over: the middle of each overlap (blend centre)."""
    spans = tile_spans(length, tile=tile, overlap=overlap)
    return [(b0 + a1) // 2 for (_, a1), (b0, _) in itertools.pairwise(spans)]


def seam_ratio(tiled: np.ndarray, whole: np.ndarray, rows: list[int], cols: list[int]) -> float:
    """Mean |jump| across the cut lines in ``tiled`` over the same in ``whole``."""

    def jumps(image: np.ndarray) -> float:
        across_cols = [np.abs(image[:, c] - image[:, c - 1]) for c in cols]
        across_rows = [np.abs(image[r, :] - image[r - 1, :]) for r in rows]
        return float(np.mean(np.concatenate(across_cols + across_rows)))

    return jumps(tiled) / jumps(whole)


def band_ratio(diff: np.ndarray, rows: list[int], cols: list[int], half: int = 8) -> float:
    """Mean |tiled - whole| within ``half`` px of a cut line over the mean elsewhere.

    Differences caused by the tiling geometry gather along the cut lines (ratio above 1);
    differences caused by each tile seeing less context spread evenly (ratio about 1).
    """
    near = np.zeros(diff.shape, dtype=bool)
    for r in rows:
        near[max(0, r - half) : r + half, :] = True
    for c in cols:
        near[:, max(0, c - half) : c + half] = True
    return float(diff[near].mean() / diff[~near].mean())


def naive_tiles(model: torch.nn.Module, image: np.ndarray, tile: int) -> np.ndarray:
    """Non-overlapping tiles pasted side by side: what seams look like."""
    out = np.empty_like(image)
    for r in range(0, image.shape[0], tile):
        for c in range(0, image.shape[1], tile):
            window = (slice(r, r + tile), slice(c, c + tile))
            out[window] = predict_full(model, image[window])
    return out


def figures(model: torch.nn.Module, image: np.ndarray, *, tile: int, overlap: int) -> dict:
    whole = predict_full(model, image)
    tiled = predict_tiled(model, image, tile=tile, overlap=overlap)
    naive = naive_tiles(model, image, tile)
    h, w = image.shape
    blend_rows, blend_cols = (
        cut_lines(h, tile=tile, overlap=overlap),
        cut_lines(w, tile=tile, overlap=overlap),
    )
    naive_rows, naive_cols = list(range(tile, h, tile)), list(range(tile, w, tile))
    grey = 255.0
    return {
        "whole": whole,
        "tiled": tiled,
        "naive": naive,
        "blended": {
            "max_diff": float(np.abs(tiled - whole).max() * grey),
            "mean_diff": float(np.abs(tiled - whole).mean() * grey),
            "seam_ratio": seam_ratio(tiled, whole, blend_rows, blend_cols),
            "band_ratio": band_ratio(np.abs(tiled - whole), blend_rows, blend_cols),
        },
        "naive_tiles": {
            "max_diff": float(np.abs(naive - whole).max() * grey),
            "mean_diff": float(np.abs(naive - whole).mean() * grey),
            "seam_ratio": seam_ratio(naive, whole, naive_rows, naive_cols),
            "band_ratio": band_ratio(np.abs(naive - whole), naive_rows, naive_cols),
        },
    }


def picture(result: dict, *, centre: tuple[int, int], half: int = 96) -> np.ndarray:
    """Crops around ``centre`` (row, col): whole | tiled | 10 x |diff| | naive, labelled."""
    r, c = centre
    window = (slice(r - half, r + half), slice(c - half, c + half))
    diff = np.clip(np.abs(result["tiled"] - result["whole"]) * 10, 0, 1)
    panels = []
    for name, image in (("whole", result["whole"]), ("tiled+blended", result["tiled"]),
                        ("10x |difference|", diff), ("naive tiles", result["naive"])):  # fmt: skip
        panel = cv2.resize(
            from_float(image[window], 8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST
        )
        panel = cv2.cvtColor(panel, cv2.COLOR_GRAY2BGR)
        cv2.putText(panel, name, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 200, 255), 2)
        panels.append(panel)
        panels.append(np.full((panel.shape[0], 6, 3), 255, np.uint8))
    return np.concatenate(panels[:-1], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--out", default="docs/seams_aeanet.png")
    parser.add_argument(
        "--cache", help="safetensors file: load the trained model if present, else save it"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("aeanet", bn_momentum=0.1)  # published size; fast-settling BN
    start = time.perf_counter()
    if args.cache and Path(args.cache).is_file():
        model.load_state_dict(load_file(args.cache))
        model.eval()
        loss = float("nan")
    else:
        loss = train_briefly(model, steps=args.steps)
        if args.cache:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.cache)
    trained_s = time.perf_counter() - start
    lr, _ = specimen_pair(np.random.default_rng(7), 1024, 768, 8)
    result = figures(model, to_float(lr), tile=args.tile, overlap=args.overlap)
    line = (
        cut_lines(768, tile=args.tile, overlap=args.overlap)[0],
        cut_lines(1024, tile=args.tile, overlap=args.overlap)[0],
    )
    cv2.imwrite(args.out, picture(result, centre=line))
    report = {
        "steps": args.steps, "final_l1": loss, "train_seconds": round(trained_s, 1),
        "tile": args.tile, "overlap": args.overlap,
        "blended": result["blended"], "naive_tiles": result["naive_tiles"], "picture": args.out,
    }  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
