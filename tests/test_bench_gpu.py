"""benchmarks/bench_gpu.py in its CPU mode: every figure it writes, checked against the
others (FLOPs per pixel, images/s, utilisation, the projection)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_gpu.json"
    command = [sys.executable, str(BENCH), "--device", "cpu", "--quick", "--out", str(out),
               "--models", "unet", "aeanet", "--settings", "float32", "bf16",
               "--peak-tflops", "0.05", "--loader-workers", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: CPU" in result.stdout
    return json.loads(out.read_text())


def test_every_model_shape_and_setting_is_timed(report):
    assert report["device"]["type"] == "cpu" and report["device"]["name"].startswith("CPU")
    rows = {(r["model"], r["shape"], r["setting"]): r for r in report["steps"]}
    assert len(rows) == 2 * 2 * 2 and not report["skipped"]
    for row in rows.values():
        assert "error" not in row
        assert row["images_per_second"] == pytest.approx(row["batch"] / row["step_seconds"])
        flops = report["flops_per_step"][f"{row['model']}/{row['shape']}"]
        assert row["tflops_per_second"] == pytest.approx(flops / row["step_seconds"] / 1e12)
        assert row["mfu"] == pytest.approx(row["tflops_per_second"] / 0.05)
        assert row["peak_memory_mib"] is None  # no GPU memory to report on a CPU


def test_flops_scale_with_pixels(report):
    flops = report["flops_per_step"]
    paper, full = (2 * 32 * 32), (1 * 48 * 64)
    assert flops["unet/paper"] / flops["unet/full"] == pytest.approx(paper / full, rel=1e-9)
    # AEANet's attention is linear in the tokens too (docs/method.md section 2), up to the
    # references' keys and values, computed once per step whatever the image size
    assert flops["aeanet/paper"] / flops["aeanet/full"] == pytest.approx(paper / full, rel=0.02)


def test_loader_curves_and_projection(report):
    assert {(r["shape"], r["workers"]) for r in report["loader"]} == {
        ("paper", 0),
        ("paper", 1),
        ("full", 0),
        ("full", 1),
    }
    for row in report["loader"]:
        assert row["crops_per_second"] > 0
        assert row["keeps_up"] == (row["crops_per_second"] >= row["gpu_demand_images_per_second"])
    for name in ("unet", "aeanet"):
        curve = report["loss_curves"][name]
        assert set(curve["curves"]) == {"float32", curve["candidate"]}  # one when the same
        assert all(len(losses) == 4 and min(losses) > 0 for losses in curve["curves"].values())
        fastest = min((r for r in report["steps"] if r["model"] == name and r["shape"] == "paper"),
                      key=lambda r: r["step_seconds"])  # fmt: skip
        assert curve["candidate"] == fastest["setting"]
        projected = report["projection_paper_steps"][name]
        assert projected["minutes"] == pytest.approx(fastest["step_seconds"] * 120_000 / 60)


def test_refuses_cuda_without_a_gpu(tmp_path):
    out = tmp_path / "b.json"
    result = subprocess.run([sys.executable, str(BENCH), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "no CUDA device visible" in result.stderr
    assert not out.exists()


def test_steps_only_at_the_paper_shape_is_the_warm_up_of_gpu_compare(tmp_path, capsys):
    from benchmarks import bench_gpu

    out = tmp_path / "warmup.json"
    argv = ["--device", "cpu", "--quick", "--out", str(out), "--models", "gvtnet",
            "--settings", "float32", "--shapes", "paper", "--steps-only", "--steps", "1",
            "--warmup", "1"]  # fmt: skip
    assert bench_gpu.main(argv) == 0  # in process: a second start of torch costs seconds
    assert "gvtnet  paper  float32" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [(r["model"], r["shape"], r["setting"]) for r in report["steps"]] == [
        ("gvtnet", "paper", "float32")]  # fmt: skip
    assert report["steps"][0]["step_seconds"] > 0 and report["steps"][0]["warmup_seconds"] > 0
    assert report["loader"] == [] and report["loss_curves"] == {}  # neither was run
    assert list(report["flops_per_step"]) == ["gvtnet/paper"]
