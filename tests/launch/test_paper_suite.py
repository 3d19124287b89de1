"""launch/paper_suite.sh: every row of the paper's tables, one budget, in a dry run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.datasets import make_dataset

REPO = Path(__file__).resolve().parents[2]


def _dry_run(data, out, *args):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [str(REPO / "launch/paper_suite.sh"), str(data), str(out), "--dry-run", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("suite") / "DATA", pairs=3)


def test_every_row_and_seed_with_the_same_cpu_budget(data, tmp_path):
    commands = _dry_run(data, tmp_path / "out", "--seeds", "0 1")
    trains = [c for c in commands if "aeatrain/train.py" in c]
    evals = [c for c in commands if "aeatrain.evaluate" in c]
    assert len(trains) == 2 * (7 + 3 * 3)  # seeds x (pooled + self-training per pair)
    assert len(evals) == 2 * (7 + 3)
    for command in trains:
        assert "--train.steps 300 " in command and "--model.base_channels 16 " in command
        config = command.split("--config ")[1].split()[0]
        assert (REPO / config).is_file()
    self_runs = [c for c in trains if "-self-seed0/" in c and "configs/aeanet.yaml" in c]
    assert [c.split('--data.pairs ["')[1].split('"')[0] for c in self_runs] == [
        "pair00", "pair01", "pair02"]  # fmt: skip
    assert sum("--selftrain" in c for c in evals) == 2 * 3


def test_paper_profile_keeps_the_shipped_configs(data, tmp_path):
    trains = [c for c in _dry_run(data, tmp_path / "out", "--profile", "paper", "--seeds", "0")
              if "aeatrain/train.py" in c]  # fmt: skip
    assert trains and not any("--train.steps" in c for c in trains)


def test_bad_arguments_are_refused(data, tmp_path):
    for args in (["--profile", "gpu"], ["--frobnicate"]):
        result = subprocess.run([str(REPO / "launch/paper_suite.sh"), str(data), str(tmp_path), *args],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2 and "error:" in result.stderr
    result = subprocess.run([str(REPO / "launch/paper_suite.sh"), str(tmp_path), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "manifest.json: no such file" in result.stderr
