"""Launched runs: 2 CPU processes (DDP over gloo), DeepSpeed ZeRO-2, full-resolution bf16.

Slow: each starts 2 Python processes that import torch and accelerate on 2 busy cores.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aeatrain.models import build_model
from aeatrain.run import checkpoint as ckpt
from tests.datasets import make_dataset
from tests.ports import free_port
from tests.train.helpers import (
    REPO,
    check,
    events,
    launch_command,
    run,
    scalar,
    train_command,
    train_env,
)

pytestmark = pytest.mark.slow

TRAIN_SCALARS = {
    "train/loss", "train/learning_rate", "train/grad_norm", "train/skipped_steps", "perf/step_seconds",
    "perf/cpu_seconds_per_step",
    "perf/samples_per_second", "perf/megapixels_per_second", "perf/peak_memory_mib",
}  # fmt: skip
VAL_SCALARS = {"val/dpsnr", "val/dssim", "val/psnr", "val/ssim", "val/tiles"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=3)


def loads_into_build_model(run_dir):
    run_json = json.loads((run_dir / "run.json").read_text())
    model = build_model(run_json["model"]["name"], **run_json["model"]["kwargs"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))  # strict
    return run_json


def test_two_cpu_processes_debug_config(data, tmp_path):
    """The issue's CI command: accelerate launch --cpu --num_processes 2 ... debug.yaml."""
    run_dir = tmp_path / "ddp"
    launch = ("--cpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    result = run(
        launch_command("--data.root", str(data), "--train.run_dir", str(run_dir),
                       launch_args=launch),
        timeout=400,
    )  # fmt: skip
    check(result)
    accumulator = events(run_dir)
    tags = accumulator.Tags()
    assert set(tags["scalars"]) >= TRAIN_SCALARS | VAL_SCALARS
    losses = [value for _, value in scalar(accumulator, "train/loss")]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0], losses  # the loss falls
    # 3 pairs, eval_max_pairs 2: rank 0 scores pair00's whole image and rank 1 pair01's,
    # 3 test tiles each, gathered without duplicates (merge_shares refuses a pair twice).
    assert [value for _, value in scalar(accumulator, "val/tiles")] == [6.0, 6.0]
    assert any(tag.startswith("val_images/") for tag in tags["images"])
    heatmaps = [tag for tag in tags["images"] if tag.startswith("val_heatmaps/")]
    assert heatmaps
    image = accumulator.Images(heatmaps[0])[-1]
    assert (image.width, image.height) == (3 * 80 + 2 * 4, 80)  # LR + 2 references
    run_json = loads_into_build_model(run_dir)
    assert run_json["step"] == 40
    latest = ckpt.newest_complete(run_dir)
    assert sorted(p.name for p in latest.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    assert ckpt.read_trainer_state(latest)["world_size"] == 2


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (.[deepspeed])")  # fmt: skip
def test_deepspeed_zero2_two_cpu_processes_trains_and_resumes(data, tmp_path):
    run_dir = tmp_path / "zero2"
    launch = (
        "--config_file", str(REPO / "launch" / "deepspeed_zero2.yaml"),
        "--num_processes", "2", "--main_process_port", str(free_port()),
    )  # fmt: skip
    common = ("--data.root", str(data), "--train.run_dir", str(run_dir),
              "--train.checkpoint_every", "4", "--logging.log_every", "2")  # fmt: skip
    first = run(launch_command(*common, "--train.steps", "8", launch_args=launch), timeout=400)
    check(first)
    saved = ckpt.checkpoint_path(run_dir, 8)
    shards = sorted(p.name for p in (saved / "pytorch_model").glob("*optim_states.pt"))
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]  # fmt: skip  ZeRO-2: each rank holds its shard of the Adam state

    resumed = run(
        launch_command(*common, "--train.steps", "12", "--resume", launch_args=launch),
        timeout=400,
    )
    check(resumed)
    assert f"resumed from {saved} at step 8" in resumed.stderr
    accumulator = events(run_dir)
    steps = [step for step, _ in scalar(accumulator, "train/loss")]
    assert steps == [2, 4, 6, 8, 10, 12]
    losses = [value for _, value in scalar(accumulator, "train/loss")]
    assert losses[-1] < losses[0]
    assert loads_into_build_model(run_dir)["step"] == 12


def test_full_resolution_bf16_config_runs_on_cpu(data, tmp_path):
    run_dir = tmp_path / "fullres"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "2",
            "--data.global_batch_size", "2", "--data.num_workers", "0",
            "--model.base_channels", "8", "--model.num_refs", "8",  # CPU bf16 is slow
            "--logging.eval_every", "2", "--logging.eval_max_pairs", "1", "--logging.log_every", "1",
            "--logging.progress_bar", "false",
            config=REPO / "configs" / "aeanet_fullres.yaml",
        ),
        timeout=400,
    )  # fmt: skip
    check(result)
    # make_dataset's 320 x 240 pairs have a 240 x 240 training region: one crop is all of it
    assert re.search(r"crops 240x240", result.stderr), result.stderr[-2000:]
    assert "mixed precision bf16" in result.stderr
    losses = scalar(events(run_dir), "train/loss")
    assert [step for step, _ in losses] == [1, 2]
    assert torch.isfinite(torch.tensor([value for _, value in losses])).all()
    run_json = loads_into_build_model(run_dir)
    assert run_json["step"] == 2
    config = (run_dir / "config.yaml").read_text()
    assert "mixed_precision: bf16" in config and "crop_size: full" in config


def worker_pids(tag: str) -> dict[int, int]:
    """RANK -> pid of the training processes whose environment carries ``tag``."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, NotADirectoryError):
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if env.get(b"AEATRAIN_TEST_TAG") == tag.encode() and b"RANK" in env:
            ranks[int(env[b"RANK"])] = int(proc.name)  # only workers have RANK set
    return ranks


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_checkpoint(data, tmp_path):
    """SIGUSR1 to rank 1 only: all ranks agree (all-reduce), main writes the checkpoint."""
    run_dir = tmp_path / "preempt2"
    launch = ("--cpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    command = launch_command(
        "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "400",
        "--logging.log_every", "1", "--logging.progress_bar", "false", launch_args=launch,
    )  # fmt: skip
    env = dict(train_env(), AEATRAIN_TEST_TAG=uuid.uuid4().hex)
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    signalled = False
    for line in process.stderr:
        if " step 3: loss" in line:
            ranks = worker_pids(env["AEATRAIN_TEST_TAG"])
            assert sorted(ranks) == [0, 1], ranks
            os.kill(ranks[1], signal.SIGUSR1)
            signalled = True
            break
    _, tail = process.communicate(timeout=300)
    assert signalled
    assert process.returncode != 0  # the launcher reports the workers' 75 its own way
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert 3 < marker["step"] <= 6 and marker["signal"] is None  # rank 0 was not signalled
    latest = ckpt.newest_complete(run_dir)
    assert latest == ckpt.checkpoint_path(run_dir, marker["step"])
    assert sorted(p.name for p in latest.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    assert "exiting with 75" in tail


def test_sigterm_to_the_launcher_checkpoints_every_rank_and_leaves_no_process(data, tmp_path):
    """Both ranks checkpoint the same step and exit 75, and no process of the run is left
    training, whichever way the installed accelerate's simple launcher takes SIGTERM: up to
    1.15 it dies at once (exit -15) and torchrun gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG) and forwards it; from 1.16 it sends SIGTERM to its whole process tree
    itself and exits 128 + 15 (SIGKILL for what still runs 5 s later: aeatrain/cpu_launch.py)."""
    run_dir = tmp_path / "terminated"
    launch = ("--cpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    command = launch_command(
        "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "400",
        "--logging.log_every", "1", "--logging.progress_bar", "false", launch_args=launch,
    )  # fmt: skip
    env = dict(train_env(), AEATRAIN_TEST_TAG=uuid.uuid4().hex)
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if " step 3: loss" in line:
            assert sorted(worker_pids(env["AEATRAIN_TEST_TAG"])) == [0, 1]
            process.send_signal(signal.SIGTERM)
            break
    _, tail = process.communicate(timeout=120)  # EOF: every holder of the pipe has exited
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), tail[-3000:]
    assert not worker_pids(env["AEATRAIN_TEST_TAG"]), "workers still running"
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert 3 < marker["step"] <= 6 and marker["signal"] == int(signal.SIGTERM), marker
    latest = ckpt.newest_complete(run_dir)
    assert latest == ckpt.checkpoint_path(run_dir, marker["step"])
    assert sorted(p.name for p in latest.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    for rank in (0, 1):
        assert f"preempted: process {rank} of 2: checkpoint {latest} written; exiting with 75" in (
            tail
        ), tail[-3000:]
    assert not (run_dir / "trainer.lock").exists()


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("vdsr", ["--model.width", "8", "--model.depth", "4"]),
        ("edsr", ["--model.width", "8", "--model.depth", "2", "--model.residual", "true"]),
        ("rcan", ["--model.width", "8", "--model.depth", "2", "--model.groups", "2",
                  "--model.reduction", "4", "--model.residual", "true"]),
    ],
)  # fmt: skip
def test_table1_networks_train_in_two_cpu_processes(data, tmp_path, name, shape):
    """VDSR, EDSR, RCAN (debug-sized) train a few DDP steps over gloo and load back."""
    run_dir = tmp_path / name
    launch = ("--cpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    overrides = ["--data.root", str(data), "--train.run_dir", str(run_dir),
                 "--model.name", name, *shape, "--model.num_refs", "64",
                 "--model.base_channels", "32", "--model.bn_momentum", "0.003",
                 "--train.steps", "6", "--train.checkpoint_every", "6",
                 "--logging.eval_every", "6", "--logging.log_every", "2"]  # fmt: skip
    check(run(launch_command(*overrides, launch_args=launch), timeout=400))
    run_json = loads_into_build_model(run_dir)
    assert run_json["model"]["name"] == name and run_json["step"] == 6
    assert run_json["model"]["kwargs"]["width"] == 8
    losses = [value for _, value in scalar(events(run_dir), "train/loss")]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses), losses
    assert ckpt.read_trainer_state(ckpt.newest_complete(run_dir))["world_size"] == 2
