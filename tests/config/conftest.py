"""A minimal config file: the two required keys, every other value its default."""

import pytest
import yaml

MINIMAL = {"data": {"root": "DATA"}, "train": {"run_dir": "RUN"}}


@pytest.fixture
def minimal(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    return path
