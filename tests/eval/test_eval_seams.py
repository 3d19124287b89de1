"""No seams from tiled AEANet prediction: the figures of tests/eval/seam_check.py, small.

An AEANet tile cannot equal the whole image (attention sees the whole tile), so the test
bounds what a seam would show: the jump across the blend centre lines relative to the same
places in the whole-image prediction (``seam_ratio``, 1 = no step) and how much the
difference gathers near the cut lines (``band_ratio``, 1 = not at all). Naive tiles (no
overlap) must fail both, or the figures would not detect a seam.
"""

from __future__ import annotations

import numpy as np

from aeatrain.files.images import to_float
from tests.datasets import specimen_pair
from tests.eval.helpers import make_model
from tests.eval.seam_check import cut_lines, figures


def test_blended_aeanet_tiles_show_no_seam_where_naive_tiles_do():
    model = make_model("aeanet", seed=0, base_channels=8, num_refs=8, residual=True).eval()
    lr, _ = specimen_pair(np.random.default_rng(0), 320, 256, 8)
    result = figures(model, to_float(lr), tile=128, overlap=64)
    blended, naive = result["blended"], result["naive_tiles"]
    assert abs(blended["seam_ratio"] - 1) < 0.02, blended
    assert blended["band_ratio"] < 1.2, blended
    assert blended["max_diff"] < 1.0, blended  # grey levels
    assert naive["seam_ratio"] > 1.5 and naive["band_ratio"] > 10, naive


def test_cut_lines_are_the_blend_centres():
    assert cut_lines(320, tile=128, overlap=64) == [96, 160, 224]
