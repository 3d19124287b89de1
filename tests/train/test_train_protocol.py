"""One protocol: the validation a run logs IS what ``python -m aeatrain.evaluate`` reports.

Training's validation scores through evaluate's scorer, aeatrain.protocol.scoring (whole images of the
``full`` split, the test regions, tiles then pairs, image i on rank i % N), so the last
logged val/dpsnr and val/dssim equal evaluate's figures for the run's final weights to
float32 precision (TensorBoard stores float32), on one process and on two.

Slow: each test trains the debug config in a subprocess (two on 2 CPU processes).
"""

import json

import numpy as np
import pytest
import torch

from aeatrain import evaluate
from tests.datasets import make_dataset
from tests.ports import free_port
from tests.train.helpers import check, events, launch_command, run, scalar, train_command

pytestmark = pytest.mark.slow

STEPS = 20
TRAIN_ARGS = (
    "--train.steps", str(STEPS), "--train.checkpoint_every", str(STEPS),
    "--model.residual", "true",  # a model that predicts images, not clipped noise
    "--logging.eval_every", "10", "--logging.eval_max_pairs", "null",
    "--logging.progress_bar", "false",
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=3)


def evaluated(run_dir, data, out, weights: str) -> dict:
    """The summary ``python -m aeatrain.evaluate`` writes to metrics.json.

    Run on one thread, as the trainer ran (OMP_NUM_THREADS=1, tests/train/helpers.py): a
    CPU convolution's sums are ordered by the thread count, and two threads move dSSIM by
    a float32 ulp on some weights (seen on the EMA weights of this run)."""
    argv = ["--run", str(run_dir), "--data", str(data), "--weights", weights, "--out", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert evaluate.main([*argv, "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())["rows"][0]["summary"]


def assert_last_validation_is(accumulator, prefix: str, summary: dict) -> None:
    for key in ("dpsnr", "dssim", "psnr", "ssim"):
        step, logged = scalar(accumulator, f"{prefix}/{key}")[-1]
        assert step == STEPS
        assert logged == np.float32(summary[key]), (prefix, key, logged, summary[key])
    assert scalar(accumulator, f"{prefix}/tiles")[-1][1] == 9  # 3 pairs x 3 tiles, once each


def test_one_process_logs_evaluates_figures_raw_and_ema(data, tmp_path):
    run_dir = tmp_path / "run"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_dir), *TRAIN_ARGS,
            "--train.ema", "true", "--train.ema_decay", "0.8",
        )
    )  # fmt: skip
    check(result)
    accumulator = events(run_dir)
    raw = evaluated(run_dir, data, tmp_path / "raw", "raw")
    assert_last_validation_is(accumulator, "val", raw)
    assert_last_validation_is(
        accumulator, "val_ema", evaluated(run_dir, data, tmp_path / "ema", "ema")
    )
    assert raw["psnr"] > 20  # the figures compared are an image's, not clipped noise (~8 dB)
    assert [step for step, _ in scalar(accumulator, "val/dpsnr")] == [10, 20]
    images = accumulator.Tags()["images"]
    assert "val_images/pair00/test0" in images and "val_ema_heatmaps/pair00/test0" in images


def test_two_processes_log_evaluates_figures(data, tmp_path):
    """Rank 1 scores pair01 only; its BatchNorm statistics are the main process's (the
    saved ones), and the gathered scores are each pair's once."""
    run_dir = tmp_path / "ddp"
    launch = ("--cpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    result = run(
        launch_command("--data.root", str(data), "--train.run_dir", str(run_dir), *TRAIN_ARGS,
                       launch_args=launch),
        timeout=400,
    )  # fmt: skip
    check(result)
    assert_last_validation_is(events(run_dir), "val", evaluated(run_dir, data, tmp_path, "raw"))
