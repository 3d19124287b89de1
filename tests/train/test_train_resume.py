"""Exact resume after SIGKILL, and preemption (SIGUSR1 -> checkpoint -> exit 75 -> resume).

One process on CPU, same seed: the loader makes each batch a pure function of the step,
the checkpoint holds weights, Adam state, BatchNorm statistics and RNG states, and the
learning rate is a function of the step, so the resumed run must end with BITWISE the same
weights as the uninterrupted one.
"""

import json
import signal
import subprocess
import time

import pytest

from aeatrain.run import checkpoint as ckpt
from aeatrain.training.preemption import EXIT_PREEMPTED
from tests.datasets import make_dataset
from tests.train.helpers import (
    assert_same_weights,
    check,
    run,
    train_command,
    train_env,
    weights,
)

STEPS = 24


def overrides(data, run_dir, *extra):
    return [
        "--data.root", str(data), "--train.run_dir", str(run_dir),
        "--train.steps", str(STEPS), "--train.checkpoint_every", "8",
        "--train.keep_checkpoints", "5", "--logging.eval_every", "100",
        "--logging.log_every", "1", "--logging.progress_bar", "false", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=2)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    check(run(train_command(*overrides(data, run_dir))))
    return weights(run_dir / "model.safetensors")


def _start(data, run_dir, *extra):
    return subprocess.Popen(
        train_command(*overrides(data, run_dir, *extra)),
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    "cached", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["in-place", "cache_dir"]
)
def test_sigkill_right_after_a_checkpoint_then_resume_is_bitwise_exact(
    data, uninterrupted, tmp_path, cached
):
    """With ``data.cache_dir`` the shards are read from staged copies: the same batches, so
    the same weights as the uninterrupted run that read them in place."""
    run_dir = tmp_path / "killed"
    cache = ("--data.cache_dir", str(tmp_path / "cache")) if cached else ()
    process = _start(data, run_dir, *cache)
    first = run_dir / "checkpoints" / "step_8" / ckpt.STATE_FILE
    deadline = time.monotonic() + 180
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()  # SIGKILL: no handler runs, whatever was being written stays half done
    process.communicate(timeout=60)
    assert first.exists(), "the run never wrote its first checkpoint"
    assert not (run_dir / "model.safetensors").exists(), "killed too late: the run had finished"
    killed_at = ckpt.read_trainer_state(ckpt.newest_complete(run_dir))["step"]
    assert killed_at < STEPS

    resumed = run(train_command(*overrides(data, run_dir, *cache), "--resume"))
    check(resumed)
    assert f"step_{killed_at} at step {killed_at}" in resumed.stderr
    if cached:  # every shard the run read, staged once under its sha256
        staged = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").glob("*.tar"))
        assert staged == ["full-000000.tar", "train-000000.tar"]  # full: validation
    assert_same_weights(weights(run_dir / "model.safetensors"), uninterrupted)
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["step"] == STEPS
    assert not list((run_dir / "checkpoints").glob("*.partial"))  # debris pruned


def test_sigusr1_checkpoints_within_a_step_exits_75_and_resume_continues(
    data, uninterrupted, tmp_path
):
    run_dir = tmp_path / "preempted"
    process = _start(data, run_dir)
    signalled_after = None
    for line in process.stderr:
        if " step 3: loss" in line:
            process.send_signal(signal.SIGUSR1)
            signalled_after = 3
            break
    _, tail = process.communicate(timeout=120)
    assert signalled_after is not None, "the run never logged step 3"
    assert process.returncode == EXIT_PREEMPTED, tail[-3000:]
    marker = json.loads((run_dir / "preempted.json").read_text())
    stopped = marker["step"]
    # The signal lands while step 4 or 5 runs; that step completes and is checkpointed.
    assert signalled_after < stopped <= signalled_after + 3
    assert marker["exit_code"] == 75 and marker["signal"] == int(signal.SIGUSR1)
    assert ckpt.newest_complete(run_dir) == ckpt.checkpoint_path(run_dir, stopped)
    assert not (run_dir / "model.safetensors").exists()

    resumed = run(train_command(*overrides(data, run_dir), "--resume"))
    check(resumed)
    assert f"resumed from {ckpt.checkpoint_path(run_dir, stopped)} at step {stopped}" in (
        resumed.stderr
    )
    assert not (run_dir / "preempted.json").exists()
    assert_same_weights(weights(run_dir / "model.safetensors"), uninterrupted)
