"""launch/local.sh on a machine without GPUs: N CPU processes through accelerate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.datasets import make_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_local_sh_trains_on_two_cpu_processes(tmp_path):
    data = make_dataset(tmp_path / "DATA", pairs=2)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "NUM_PROCESSES": "2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "HF_HOME": "/nonexistent-hf-home"}  # fmt: skip
    result = subprocess.run(
        [str(REPO / "launch/local.sh"), "configs/debug.yaml", "--data.root", str(data),
         "--train.run_dir", str(run_dir), "--train.steps", "6", "--logging.progress_bar", "false"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local.sh: 2 process(es) on CPU" in result.stdout
    assert "2 process(es), MULTI_CPU" in result.stderr
    assert json.loads((run_dir / "run.json").read_text())["step"] == 6


def test_local_sh_refuses_a_missing_config(tmp_path):
    result = subprocess.run([str(REPO / "launch/local.sh"), "nope.yaml"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "nope.yaml: no such config" in result.stderr
