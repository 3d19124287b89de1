"""launch/gpu_check.sh where there is no GPU: it refuses in one line, or, given a GPU that
torch cannot use (a stand-in nvidia-smi), reports the failed stage in its JSON."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _run(out, env=None, *args):
    return subprocess.run(
        [str(SCRIPT), *([str(out)] if out is not None else []), *args],
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_line_error(result, expected: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: error: "), result.stderr
    assert expected in lines[0]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is installed")
def test_refuses_without_cuda_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    _one_line_error(_run(out), "no CUDA GPU on this machine")
    assert not out.exists()


def test_refuses_bad_usage_and_a_folder_that_is_not_empty(tmp_path):
    _one_line_error(_run(None), "usage: launch/gpu_check.sh OUT")
    (tmp_path / "theirs.txt").write_text("not ours\n")
    _one_line_error(_run(tmp_path), f"{tmp_path}: exists and is not an empty folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.txt"]


def _stand_in_gpu(tmp_path) -> dict:
    """The environment of a machine whose nvidia-smi names a GPU: a stand-in nvidia-smi,
    an empty bundle of wheels, and an environment that has everything but a GPU (this
    python: gpu_setup.sh finds nothing to install)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text('#!/bin/sh\necho "Stand-in GPU, 1 MiB, 0.0"\n')
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for path in (fake / "nvidia-smi", venv / "python"):
        path.chmod(0o755)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "BUNDLE.txt").write_text("")
    return {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "GPU_CHECK_VENV": str(venv.parent),
            "GPU_WHEELS": str(tmp_path / "wheels"), "PYTHONPATH": str(REPO)}  # fmt: skip


def test_refuses_without_a_bundle_of_wheels(tmp_path):
    env = _stand_in_gpu(tmp_path)
    (tmp_path / "wheels" / "BUNDLE.txt").unlink()
    out = tmp_path / "out"
    _one_line_error(_run(out, env), f"{tmp_path / 'wheels'}/BUNDLE.txt: no such file (make the "
                                    f"bundle with launch/gpu_wheels.sh")  # fmt: skip
    assert not out.exists()


def test_a_gpu_torch_cannot_use_fails_the_setup_stage_in_the_json(tmp_path):
    out = tmp_path / "out"
    result = _run(out, _stand_in_gpu(tmp_path))
    assert result.returncode == 1, result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["card"] == "Stand-in GPU, 1 MiB, 0.0"
    assert list(report["stages"]) == ["setup"] and report["stages"]["setup"]["exit"] == 1
    assert report["gpu_tests"] is None and report["bench"] is None
    log = (out / "gpu_check.log").read_text()
    assert "already holds the bundle and aeatrain" in log  # nothing installed
    assert "torch sees no GPU" in log and "== setup: exit 1" in log
