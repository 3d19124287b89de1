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


CPU_SHAPES = {  # the cpu profile: half the published width, a quarter of each depth
    "unet": "--model.base_channels 16 --model.bn_momentum 0.1 --model.residual true",
    "vdsr": "--model.width 32 --model.depth 5",
    "edsr": "--model.width 32 --model.depth 4 --model.residual true",
    "rcan": "--model.width 32 --model.groups 2 --model.depth 5 --model.residual true",
}


def _config(command: str) -> str:
    return command.split("--config configs/")[1].split(".yaml")[0]


def test_every_row_and_seed_with_the_same_cpu_budget(data, tmp_path):
    commands = _dry_run(data, tmp_path / "out", "--seeds", "0 1")
    trains = [c for c in commands if "aeatrain/train.py" in c]
    libraries = [c for c in commands if "aeatrain.lbnlm" in c]
    evals = [c for c in commands if "aeatrain.evaluate" in c]
    assert len(trains) == 2 * (10 + 6 * 3)  # seeds x (pooled + self-training per pair)
    assert len(libraries) == 2 * (1 + 3)  # lbnlm: pooled + one per pair, per seed
    assert len(evals) == 2 * (11 + 7)
    for command in trains:
        assert "--train.steps 1000 " in command and "--data.crop_size 64 " in command
        assert "--optim.schedule cosine --optim.warmup_steps 50 " in command  # the recipe
        assert "--train.checkpoint_every 100 --train.keep_checkpoints 10 " in command
        config = _config(command)
        assert (REPO / "configs" / f"{config}.yaml").is_file()
        assert CPU_SHAPES.get(config, CPU_SHAPES["unet"]) in command, command
    assert {_config(c) for c in trains} >= {"vdsr", "edsr", "rcan", "unet", "aeanet"}
    self_runs = [c for c in trains if "-self-seed0/" in c and "configs/rcan.yaml" in c]
    assert [c.split('--data.pairs ["')[1].split('"')[0] for c in self_runs] == [
        "pair00", "pair01", "pair02"]  # fmt: skip
    self_libraries = [c for c in libraries if "lbnlm-self-seed1/" in c]
    assert [c.split("--pairs ")[1].split()[0] for c in self_libraries] == [
        "pair00", "pair01", "pair02"]  # fmt: skip
    assert all("--seed 1" in c for c in self_libraries)
    assert sum("--selftrain" in c for c in evals) == 2 * 7


@pytest.mark.slow  # two dry runs of the suite: about 10 s
def test_rows_option_runs_only_the_named_rows(data, tmp_path):
    commands = _dry_run(data, tmp_path / "out", "--seeds", "0", "--rows", "vdsr-pooled lbnlm-self")
    assert len(commands) == 1 + 1 + 3 + 1  # vdsr train + eval, 3 libraries + one eval
    assert "configs/vdsr.yaml" in commands[0] and "--selftrain" in commands[-1]
    result = subprocess.run(
        [str(REPO / "launch/paper_suite.sh"), str(data), str(tmp_path), "--rows", "vdsr-both"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown row vdsr-both" in result.stderr


def test_steps_stretches_the_cpu_recipe(data, tmp_path):
    commands = _dry_run(
        data, tmp_path / "out", "--seeds", "0", "--rows", "unet-pooled", "--steps", "5000"
    )
    train = next(c for c in commands if "aeatrain/train.py" in c)
    assert (
        "--train.steps 5000 " in train
        and "--optim.schedule cosine --optim.warmup_steps 50 " in train
    )
    assert "--train.checkpoint_every 500 --train.keep_checkpoints 10 " in train
    assert "--logging.eval_every 5000 " in train
    for args in (["--steps", "5001"], ["--steps", "0"], ["--profile", "paper", "--steps", "5000"]):
        result = subprocess.run([str(REPO / "launch/paper_suite.sh"), str(data), str(tmp_path), *args],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2 and "--steps" in result.stderr, args


def test_paper_profile_keeps_the_shipped_configs(data, tmp_path):
    trains = [c for c in _dry_run(data, tmp_path / "out", "--profile", "paper", "--seeds", "0")
              if "aeatrain/train.py" in c]  # fmt: skip
    assert trains and not any("--train.steps" in c or "--model." in c for c in trains)


def test_bad_arguments_are_refused(data, tmp_path):
    for args in (["--profile", "gpu"], ["--frobnicate"]):
        result = subprocess.run([str(REPO / "launch/paper_suite.sh"), str(data), str(tmp_path), *args],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2 and "error:" in result.stderr
    result = subprocess.run([str(REPO / "launch/paper_suite.sh"), str(tmp_path), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "manifest.json: no such file" in result.stderr
