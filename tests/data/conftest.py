"""Fixtures of tests/data: tiny DATA folders (tests/datasets.py), built once per session
and only read (a test that changes one copies it first)."""

from pathlib import Path

import pytest

from tests.datasets import coded_pair, make_dataset, write_dataset


@pytest.fixture(scope="session")
def coded(tmp_path_factory) -> Path:
    """Three coordinate-coded 16-bit pairs of 320x240 (train regions 240x240)."""
    images = {f"pair{k:02d}": coded_pair(k, 240, 320) for k in range(3)}
    return write_dataset(tmp_path_factory.mktemp("coded") / "DATA", images)


@pytest.fixture(scope="session")
def plain(tmp_path_factory) -> Path:
    """The default tests/datasets.py dataset, several shards per split."""
    return make_dataset(tmp_path_factory.mktemp("plain") / "DATA", max_samples_per_shard=2)
