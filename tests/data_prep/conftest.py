"""Small synthetic fixtures shared by the data_prep tests (made once per session)."""

from __future__ import annotations

import pytest

from data_prep.build import build_dataset
from data_prep.synth.config import SynthConfig
from data_prep.synth.generate import synthesize

# 512 x 384 pairs: big enough to register well (corner error ~0.1-0.25 HR px), small
# enough to make and register in about a second each on one core
SMALL = SynthConfig(width=512, height=384, bar_rows=40)
SMALL_SEED = 11


@pytest.fixture(scope="session")
def small_raw(tmp_path_factory):
    """RAW folder: 3 synthetic 8-bit pairs of 512 x 384 (+ 40-row bar) with truth.json."""
    raw = tmp_path_factory.mktemp("small") / "raw"
    synthesize(raw, pairs=3, seed=SMALL_SEED, config=SMALL, workers=1)
    return raw


@pytest.fixture(scope="session")
def small_data(small_raw, tmp_path_factory):
    """DATA folder built from ``small_raw`` in this process."""
    data = tmp_path_factory.mktemp("small_data") / "data"
    build_dataset(small_raw, data, bar_row=SMALL.height, workers=1)
    return data
