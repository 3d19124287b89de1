"""launch/local.sh on a machine without GPUs: N CPU processes through accelerate."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.datasets import make_dataset
from tests.ports import default_port_taken

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_local_sh_trains_on_two_cpu_processes_with_paths_relative_to_the_caller(tmp_path):
    """Called from another folder: CONFIG, the config's data.root (DATA) and an override's
    train.run_dir are all relative to that folder, none to the repository."""
    make_dataset(tmp_path / "DATA", pairs=2)
    (tmp_path / "cfg").mkdir()
    shutil.copy(REPO / "configs/debug.yaml", tmp_path / "cfg/mine.yaml")  # data.root: DATA
    env = {**os.environ, "PYTHON": sys.executable, "NUM_PROCESSES": "2", "OMP_NUM_THREADS": "1",
           "HF_HOME": "/nonexistent-hf-home"}  # fmt: skip
    env.pop("PYTHONPATH", None)  # local.sh makes the checkout importable itself
    with default_port_taken():  # issue 23 item 20: a second CPU run died with EADDRINUSE
        result = subprocess.run(
            [str(REPO / "launch/local.sh"), "cfg/mine.yaml", "--train.run_dir", "runs/here",
             "--train.steps", "6", "--logging.progress_bar", "false"],
            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local.sh: 2 process(es) on CPU" in result.stdout
    assert "2 process(es), MULTI_CPU" in result.stderr
    run_json = json.loads((tmp_path / "runs/here/run.json").read_text())
    assert run_json["step"] == 6 and run_json["dataset"]["path"] == "DATA"
    assert not (REPO / "runs/here").exists()


@pytest.mark.slow
def test_a_user_error_of_two_processes_is_one_line_once_and_exit_2(tmp_path):
    """Issue 23 item 20: both ranks' lines, then accelerate's and torchrun's tracebacks,
    exit 1."""
    env = {**os.environ, "PYTHON": sys.executable, "NUM_PROCESSES": "2", "OMP_NUM_THREADS": "1",
           "HF_HOME": "/nonexistent-hf-home"}  # fmt: skip
    result = subprocess.run(
        [str(REPO / "launch/local.sh"), str(REPO / "configs/debug.yaml"), "--data.root",
         str(tmp_path / "absent"), "--train.run_dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == (
        f"error: {tmp_path / 'absent'}: no such manifest (expected a DATA folder from "
        f"data_prep build)\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("count", ["0", "two"])
def test_local_sh_refuses_a_process_count_below_one(tmp_path, count):
    """Issue 23 item 24: NUM_PROCESSES=0 ran one process."""
    result = subprocess.run(
        [str(REPO / "launch/local.sh"), str(REPO / "configs/debug.yaml")],
        env={**os.environ, "NUM_PROCESSES": count, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"local.sh: error: NUM_PROCESSES={count}: must be a whole number of at least 1\n"
    )


def test_local_sh_refuses_a_missing_config(tmp_path):
    result = subprocess.run([str(REPO / "launch/local.sh"), "nope.yaml"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "nope.yaml: no such config" in result.stderr
