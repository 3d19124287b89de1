"""launch/gpu_compare.sh --smoke: every stage of the GPU comparison on the CPU, tiny (the
four-family data, the plan from a benchmark's step times, three trainings, their
evaluations and the table); bad arguments refused in one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "gpu_compare.sh"


def _stand_in_environment(tmp_path) -> dict:
    """An empty bundle and an environment that is this python (nothing to install)."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "python").chmod(0o755)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "BUNDLE.txt").write_text("")
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO),
            "GPU_VENV": str(venv.parent), "GPU_WHEELS": str(tmp_path / "wheels"),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _bench(path: Path) -> Path:
    """Step times as bench_gpu.py writes them: float32 is the fastest setting train.py can
    run whose loss curve keeps float32's (bf16+channels_last does not, and the CUDA-graph
    setting is not one of train.py's)."""
    seconds = {"float32": (0.5, 0.7, 0.9), "bf16": (0.6, 0.8, 1.0), "bf16+channels_last": (0.1,) * 3,
               "bf16+compile+cudagraphs": (0.01,) * 3}  # fmt: skip
    rows = [{"model": m, "shape": shape, "setting": setting, "step_seconds": s, "warmup_seconds": 1.0}
            for setting, times in seconds.items() for m, s in zip(("unet", "gvtnet", "aeanet"), times)
            for shape in ("paper", "full")]  # fmt: skip
    curves = {"aeanet": {"candidate": "bf16+channels_last", "keeps_float32_curve": False}}
    path.write_text(json.dumps({"steps": rows, "loss_curves": curves}))
    return path


@pytest.mark.slow  # 3 trainings and 3 evaluations, each its own process: about 60 s
def test_smoke_runs_every_stage_on_the_same_pooled_data(tmp_path):
    bench = _bench(tmp_path / "bench.json")
    out = tmp_path / "out"
    result = subprocess.run([str(SCRIPT), str(out), "--smoke", "--bench", str(bench),
                             "--setting", "fastest"],
                            env=_stand_in_environment(tmp_path), capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((out / "gpu_compare.json").read_text())
    stages = ["setup", "data", "plan", "train unet", "evaluate unet", "train gvtnet",
              "evaluate gvtnet", "train aeanet", "evaluate aeanet", "table"]  # fmt: skip
    assert list(report["stages"]) == stages  # no warm-up: the step times came with --bench
    assert all(stage["exit"] == 0 for stage in report["stages"].values())
    plan = report["plan"]
    assert list(plan["models"]) == ["unet", "gvtnet", "aeanet"]  # no time for ablations
    assert plan["models"]["gvtnet"]["step_seconds"] == 0.7 and plan["fits"]
    assert plan["setting"] == report["setting"] == "float32"
    assert "setting float32 (of float32, bf16)" in result.stdout
    # the plan's printed line says what is shared: 9 minutes less the time spent so far
    assert f"{plan['seconds_per_model']:.0f} s of the 9 minutes each" in result.stdout
    pairs = (out / "DATA" / "manifest.json").read_text()
    for family in ("clusters", "grains", "fibres", "porous"):
        assert f'"{family}-syn000"' in pairs
    table = (out / "results.md").read_text()
    for model in ("unet", "gvtnet", "aeanet"):
        assert report["models"][model]["steps"] == 3  # the smoke cap
        assert json.loads((out / "runs" / model / "run.json").read_text())["step"] == 3
        summary = report["models"][model]["summary"]
        assert -60 < summary["dpsnr"] < 60 and summary["dpsnr"] != 0
        (line,) = [line for line in table.splitlines() if line.startswith(f"| {model}-pooled |")]
        assert float(line.split("|")[3]) == pytest.approx(summary["dpsnr"], abs=0.006)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "usage: launch/gpu_compare.sh OUT"),
        (["OUT", "--setting", "fp8", "--smoke"], "--setting fp8: expected fastest, float32, bf16"),
        (["OUT", "--minutes", "nine"], "--minutes nine: expected a number of minutes"),
        (["OUT", "--bench", "missing.json"], "missing.json: no such file"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, args, expected):
    args = [str(tmp_path / a) if a in ("OUT", "missing.json") else a for a in args]
    result = subprocess.run([str(SCRIPT), *args], env=_stand_in_environment(tmp_path),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("gpu_compare.sh: error: ") and expected in result.stderr
    assert not (tmp_path / "OUT").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is installed")
def test_without_smoke_it_needs_a_gpu(tmp_path):
    result = subprocess.run([str(SCRIPT), str(tmp_path / "out")],
                            env=_stand_in_environment(tmp_path), capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "no CUDA GPU on this machine" in result.stderr
    assert not (tmp_path / "out").exists()
