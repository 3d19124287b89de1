"""Scoring a model by the paper's protocol: what ``python -m aeatrain.evaluate`` AND
training's validation (``val/*``, ``val_ema/*``) call, so the curve in TensorBoard is the
number in the report.

Each registered LR image of the dataset's ``full`` split is predicted whole (reflect-padded
to the model's multiple and cropped back) or in the paper's tiles (:class:`Tiling`), and
with ``tta="d4"`` as the mean of its 8 flips/rotations (aeatrain.protocol.inference);
the test regions the split recorded (aeatrain.protocol.split) are scored by
:func:`aeatrain.protocol.metrics.score_regions`, averaged over tiles, then over pairs
(:func:`summarize_pairs`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from aeatrain.files.images import to_float
from aeatrain.protocol.inference import (
    PAD_MULTIPLE,
    autocast_to_weights,
    predict_full,
    predict_paper_tiles,
    self_ensemble,
)
from aeatrain.protocol.metrics import TileScores, average_pairs, mean_scores, score_regions

PAPER_MARGIN = 32
PAPER_TILES = (512, 384, 256, 128)  # paper Fig. 7


@dataclass(frozen=True)
class Tiling:
    """How a whole image is predicted: at once (``tile`` None) or in the paper's tiles;
    ``tta`` "d4" averages that prediction over the image's 8 flips/rotations."""

    tile: int | None = None
    margin: int = PAPER_MARGIN
    tta: str = "none"

    @property
    def label(self) -> str:
        label = "whole image" if self.tile is None else f"tiles {self.tile} (margin {self.margin})"
        return label if self.tta == "none" else f"{label} + {self.tta}"

    def as_dict(self) -> dict:
        if self.tile is None:
            layout = {"mode": "whole", "pad_multiple": PAD_MULTIPLE}
        else:
            layout = {"mode": "tiles", "tile": self.tile, "margin": self.margin}
        return layout if self.tta == "none" else {**layout, "tta": self.tta}


def predict_image(model: nn.Module, lr: np.ndarray, tiling: Tiling, device) -> np.ndarray:
    """Float prediction of a whole registered LR image (integer (H, W)).

    A model whose weights are 16-bit runs under ``autocast_to_weights``.
    """

    def predict(image: np.ndarray) -> np.ndarray:
        if tiling.tile is None:
            return predict_full(model, image, device=device)
        return predict_paper_tiles(
            model, image, tile=tiling.tile, margin=tiling.margin, device=device
        )

    with autocast_to_weights(model):
        return self_ensemble(predict, to_float(lr), tiling.tta)


# (member, tiling, pair) -> tile id -> scores; member and tiling index score_share's lists
ShareScores = dict[tuple[int, int, str], dict[str, TileScores]]


def score_share(
    members: Sequence[tuple[nn.Module, Collection[str]]],
    manifest,
    *,
    tilings: Sequence[Tiling] = (Tiling(),),
    rank: int = 0,
    world_size: int = 1,
    device=None,
    cache_dir: str | None = None,
    progress=None,
    on_prediction: Callable | None = None,
) -> ShareScores:
    """THE scorer of the protocol: this process's share of every member's scores.

    ``members`` are (model, pairs it is scored on). The whole images of all their pairs
    are streamed from the manifest's ``full`` split in pair-name order, one in memory at a
    time, image i to process ``i % world_size`` (aeatrain.data.streams.full_images); each is
    predicted whole (or as ``tilings`` say) by every member scored on it and its test
    regions scored (aeatrain.protocol.metrics.score_regions). ``device`` None predicts where each
    model is. ``progress.update(1)`` (a tqdm bar) after each prediction;
    ``on_prediction(image, member, tiling, prediction)`` sees each float prediction.
    Merge the processes' shares with :func:`merge_shares`; ``python -m aeatrain.evaluate``
    and training's validation both score through here.
    """
    from aeatrain.data.streams import full_images

    users: dict[str, list[int]] = {}  # pair -> the members scored on it
    for member, (_, pairs) in enumerate(members):
        for pair in pairs:
            users.setdefault(pair, []).append(member)
    images = full_images(
        manifest, pairs=sorted(users), rank=rank, world_size=world_size, cache_dir=cache_dir
    )
    scores: ShareScores = {}
    for image in images:
        for member in users[image.pair]:
            model = members[member][0]
            for t, tiling in enumerate(tilings):
                prediction = predict_image(model, image.lr, tiling, device)
                scores[(member, t, image.pair)] = score_regions(
                    prediction, image.lr, image.hr, image.test_regions, bit_depth=image.bit_depth
                )
                if on_prediction is not None:
                    on_prediction(image, member, t, prediction)
                if progress is not None:
                    progress.update(1)
    return scores


def merge_shares(parts: Iterable[ShareScores]) -> ShareScores:
    """Every process's share in one dict; a score found in two shares is a bug (the
    images are split, never repeated) and raises ValueError."""
    merged: ShareScores = {}
    for part in parts:
        for key, tiles in part.items():
            if key in merged:
                member, tiling, pair = key
                raise ValueError(f"pair {pair} (member {member}, tiling {tiling}) scored twice")
            merged[key] = tiles
    return merged


def score_pairs(
    model: nn.Module,
    manifest,
    *,
    pairs: Collection[str],
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[ShareScores], list[ShareScores]] | None = None,
    cache_dir: str | None = None,
    on_prediction: Callable | None = None,
) -> dict[str, dict[str, TileScores]]:
    """One model's whole-image scores on ``pairs``: pair -> tile id -> scores.

    :func:`score_share` with one member and one tiling (whole images); ``gather`` (a
    collective: this process's share -> every process's) merges the shares, so every
    process returns all pairs, each scored once. Training's validation calls this.
    """
    share = score_share(
        [(model, pairs)], manifest, rank=rank, world_size=world_size, cache_dir=cache_dir,
        on_prediction=on_prediction,
    )  # fmt: skip
    scores = merge_shares(gather(share) if gather is not None else [share])
    return {pair: tiles for (_, _, pair), tiles in sorted(scores.items())}


def summarize_pairs(scores: Mapping[str, Mapping[str, TileScores]]) -> dict[str, float]:
    """The protocol's figures of pair -> tile id -> scores: mean over each pair's tiles,
    then over pairs (aeatrain.protocol.metrics); the table's and training's val/* numbers."""
    if not scores:
        raise ValueError("no pair was scored")
    return average_pairs({pair: mean_scores(tiles) for pair, tiles in scores.items()})
