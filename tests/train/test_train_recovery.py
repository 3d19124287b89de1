"""Resuming a run after things went wrong around it (issue 14, train side).

The dataset is compared by identity, not by path; broken checkpoints are skipped for the
next older intact one; a full disk at a checkpoint keeps the previous one; one live trainer
per run folder. Every run here is in-process, 1 CPU process, the debug config.
"""

import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate import Accelerator

from aeatrain.data.manifest import dataset_identity, load_manifest
from aeatrain.errors import UserError
from aeatrain.run import checkpoint as ckpt
from aeatrain.run import folder as runfolder_module
from aeatrain.run import lock as runlock
from tests.datasets import make_dataset
from tests.train.helpers import DEBUG_CONFIG, train_in_process


def train(data, run_dir, steps, *extra):
    """main() in this process: checkpoints at 8, 16, ...; validation only at the end."""
    argv = [
        "--config", str(DEBUG_CONFIG), "--data.root", str(data), "--train.run_dir",
        str(run_dir), "--train.steps", str(steps), "--train.checkpoint_every", "8",
        "--train.keep_checkpoints", "5", "--logging.eval_every", "100",
        "--logging.progress_bar", "false", *extra,
    ]  # fmt: skip
    return train_in_process(argv)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished 16-step run with complete checkpoints step_8 and step_16."""
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    assert train(data, run_dir, 16) == 0
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def resumed_step(run_dir) -> int:
    return json.loads((run_dir / "run.json").read_text())["step"]


# ---------------------------------------------------------------------- dataset identity


def test_identity_ignores_the_path_and_the_build_record_but_not_the_pixels(data, tmp_path):
    copy = shutil.copytree(data, tmp_path / "scratch" / "DATA")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(created="2030-01-01T00:00:00Z", command="data_prep build elsewhere")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    other = make_dataset(tmp_path / "other" / "DATA", pairs=2, seed=1)
    identity = dataset_identity(load_manifest(data))
    assert dataset_identity(load_manifest(copy)) == identity
    assert load_manifest(copy).sha256 != load_manifest(data).sha256
    assert dataset_identity(load_manifest(other)) != identity


def test_resume_refuses_a_dataset_rebuilt_from_other_pairs_at_the_same_path(data, run_copy):
    moved = data.with_name("DATA.orig")
    data.rename(moved)
    try:
        make_dataset(data, pairs=2, seed=1)  # the same names and path, other pixels
        with pytest.raises(UserError) as info:
            train(data, run_copy, 24, "--resume")
    finally:
        shutil.rmtree(data, ignore_errors=True)
        moved.rename(data)
    message = str(info.value)
    assert "\n" not in message
    assert "another dataset" in message and "step_16" in message and "manifest.json" in message
    assert not (run_copy / "checkpoints" / "step_24").exists()


def test_resume_accepts_the_same_data_copied_to_another_path(data, run_copy, tmp_path, caplog):
    scratch = shutil.copytree(data, tmp_path / "node-local" / "DATA")
    with caplog.at_level(logging.INFO):
        assert train(scratch, run_copy, 17, "--resume") == 0
    assert f"resumed from {run_copy / 'checkpoints' / 'step_16'} at step 16" in caplog.text
    run_json = json.loads((run_copy / "run.json").read_text())
    assert run_json["step"] == 17 and run_json["dataset"]["path"] == str(scratch)
    assert run_json["dataset"]["identity"] == dataset_identity(load_manifest(data))


# ---------------------------------------------------------------------- broken checkpoints


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKAGES = {
    "optimizer.bin truncated": lambda step: _truncate(step / "optimizer.bin"),
    "model.safetensors truncated": lambda step: _truncate(step / "model.safetensors"),
    "model.safetensors missing": lambda step: (step / "model.safetensors").unlink(),
    "trainer_state.json corrupt": lambda step: (step / ckpt.STATE_FILE).write_text('{"for'),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_newest_checkpoint_falls_back_to_the_older_one(data, run_copy, breakage, caplog):
    newest = run_copy / "checkpoints" / "step_16"
    BREAKAGES[breakage](newest)
    broken_file = breakage.split()[0]
    with caplog.at_level(logging.INFO):
        assert train(data, run_copy, 16, "--resume") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w and broken_file in w for w in warnings), warnings
    assert f"resumed from {run_copy / 'checkpoints' / 'step_8'} at step 8" in caplog.text
    assert "pytorch_model.bin" not in caplog.text
    assert ckpt.checkpoint_problem(newest) is None  # step 16 written again, whole
    assert resumed_step(run_copy) == 16


def test_no_intact_checkpoint_is_one_line_naming_the_newest(data, run_copy):
    for step in ("step_8", "step_16"):
        (run_copy / "checkpoints" / step / "model.safetensors").unlink()
    with pytest.raises(UserError) as info:
        train(data, run_copy, 24, "--resume")
    message = str(info.value)
    assert "\n" not in message and "pytorch_model.bin" not in message
    assert "step_16: model.safetensors is missing, and no older checkpoint is intact" in message


FULL_DISK_ERRORS = {  # what save_state raises: safetensors' OSError, torch.save's RuntimeError
    "No space left on device": OSError(errno.ENOSPC, "No space left on device"),
    "torch.save could not write a file: the disk is full or failing?": RuntimeError(
        "basic_ios::clear: iostream error"  # issue 23 item 16: a traceback, exit 1
    ),
}


@pytest.mark.parametrize("said", sorted(FULL_DISK_ERRORS))
def test_disk_full_at_a_checkpoint_keeps_the_previous_one(data, run_copy, monkeypatch, said):
    def full_disk(self, output_dir, **kwargs):
        Path(output_dir, "model.safetensors").write_bytes(b"half a tensor")
        raise FULL_DISK_ERRORS[said]

    before = ckpt.read_trainer_state(run_copy / "checkpoints" / "step_16")
    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    with pytest.raises(UserError) as info:
        train(data, run_copy, 17, "--resume")
    message = str(info.value)
    assert "\n" not in message
    assert "step_17.partial: could not write the checkpoint of step 17" in message
    assert said in message and "step_16" in message
    folders = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert folders == ["step_16", "step_8"]  # no debris
    assert ckpt.read_trainer_state(run_copy / "checkpoints" / "step_16") == before
    assert ckpt.checkpoint_problem(run_copy / "checkpoints" / "step_16") is None
    assert not runlock.lock_path(run_copy).exists()


def test_only_failed_writes_count_as_a_full_disk(tmp_path):
    assert ckpt.write_failure(RuntimeError("same device expected"), tmp_path) is None
    assert ckpt.write_failure(RuntimeError("[enforce fail at inline_container.cc:672] ."),
                              tmp_path / "absent").endswith(" MiB free there")  # fmt: skip
    assert ckpt.write_failure(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path) == (
        "Disk quota exceeded"
    )


def test_disk_full_at_the_start_is_one_line(data, tmp_path, monkeypatch):
    """Issue 23 item 16: TensorBoard's first event file on a full disk was a traceback."""

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "logs"))

    monkeypatch.setattr(Accelerator, "init_trackers", full_disk)
    with pytest.raises(UserError) as info:
        train(data, tmp_path / "run", 24)
    assert str(info.value) == (
        f"{tmp_path / 'run' / 'logs'}: cannot write: disk full ({tmp_path / 'run' / 'logs'})"
    )
    assert not runlock.lock_path(tmp_path / "run").exists()


def test_disk_full_at_the_final_files_says_how_to_finish(data, run_copy, monkeypatch):
    (run_copy / "run.json").unlink()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder_module, "write_run_files", full_disk)
    with pytest.raises(UserError) as info:
        train(data, run_copy, 16, "--resume")
    message = str(info.value)
    assert "\n" not in message and "could not write the final weights and run.json" in message
    assert "step 16 is complete" in message and "--resume" in message
    monkeypatch.undo()
    assert train(data, run_copy, 16, "--resume") == 0  # space again: the run finishes
    assert resumed_step(run_copy) == 16


# ---------------------------------------------------------------------- one trainer per run


def _lock_of(pid: int, host: str | None = None) -> str:
    owner = {"pid": pid, "host": host or socket.gethostname(), "since": "earlier"}
    owner["start_ticks"] = runlock._start_ticks(pid)
    return json.dumps(owner)


def test_a_second_live_trainer_is_refused_in_one_line(data, run_copy):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runlock.lock_path(run_copy).write_text(_lock_of(other.pid))
        before = sorted(p.name for p in run_copy.rglob("*"))
        with pytest.raises(UserError) as info:
            train(data, run_copy, 24, "--resume")
        message = str(info.value)
        assert "\n" not in message
        assert f"trainer.lock: the run folder is in use by another trainer (pid {other.pid}" in (
            message
        )
        assert sorted(p.name for p in run_copy.rglob("*")) == before  # nothing written
        with pytest.raises(UserError, match="in use by another trainer"):
            train(data, run_copy, 24, "--resume", "--check")
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_removed_at_the_end(data, run_copy, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runlock.lock_path(run_copy).write_text(_lock_of(dead.pid))
    with caplog.at_level(logging.WARNING):
        assert train(data, run_copy, 17, "--resume") == 0
    assert f"taking over the lock of pid {dead.pid}" in caplog.text
    assert not runlock.lock_path(run_copy).exists()


def test_lock_owners(tmp_path):
    path = runlock.acquire(tmp_path)
    owner = runlock.read_owner(path)
    assert owner.is_alive() and owner.pid == runlock.LockOwner.this_process().pid
    runlock.check_unlocked(tmp_path)  # our own lock does not refuse us
    runlock.release(tmp_path)
    assert not path.exists()
    path.write_text(_lock_of(1, host="another-node"))  # cannot be checked from here: live
    with pytest.raises(runlock.RunLockedError, match="pid 1 on another-node"):
        runlock.acquire(tmp_path)
    runlock.release(tmp_path)  # never removes another trainer's lock
    assert path.exists()
    pid_reused = json.loads(_lock_of(1))
    pid_reused["start_ticks"] = -5  # pid 1 lives, but started at another time
    assert not runlock.LockOwner(**pid_reused).is_alive()


UNREADABLE = "is not a lock file aeatrain wrote (unreadable)"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda path: path.write_text("{"), UNREADABLE),
        (lambda path: path.write_bytes(b"\xff\xfe\x00"), UNREADABLE),
        (lambda path: path.write_text('{"pid": "x", "host": "h"}'), UNREADABLE),
        (lambda path: path.mkdir(), "is a folder, not a lock file"),
    ],
)
def test_a_lock_file_that_is_no_lock_is_refused_saying_what_to_do(tmp_path, make, problem):
    """Issue 23 items 19 and 24: not taken over as "pid -1", no IsADirectoryError."""
    path = runlock.lock_path(tmp_path)
    make(path)
    expected = f"trainer.lock: {problem}; if no trainer is running in this run folder, delete it"
    for call in (runlock.acquire, runlock.check_unlocked):
        with pytest.raises(runlock.RunLockedError, match=re.escape(expected)):
            call(tmp_path)
    runlock.release(tmp_path)  # not ours: left alone
    assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["trainer.lock"]


def test_resume_with_fewer_steps_than_the_run_has_is_refused(data, run_copy):
    """Issue 23 item 7: it exited 0 and rewrote config.yaml to steps 2, weights at step 16."""
    before = {p: p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file()}
    with pytest.raises(UserError) as info:
        train(data, run_copy, 2, "--resume")
    message = str(info.value)
    assert message == (
        f"{run_copy / 'checkpoints' / 'step_16'}: the run is at step 16, past train.steps=2; "
        f"resume with train.steps of at least 16 (weights are never taken back to an "
        f"earlier step)"
    )
    after = {p: p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file()}
    assert after == before


def _take_stale_lock(run_dir, ready, done, results) -> None:
    """A trainer's acquire() that reads the stale lock slowly, so two of them overlap."""
    read_owner = runlock.read_owner

    def slow_read_owner(path):
        owner = read_owner(path)
        time.sleep(0.3)
        return owner

    runlock.read_owner = slow_read_owner
    ready.wait()
    try:
        runlock.acquire(run_dir)
        results.put(("took", os.getpid()))
    except runlock.RunLockedError:
        results.put(("refused", os.getpid()))
    done.wait(30)  # stay alive: a lock of a live process is not stale


def test_two_trainers_taking_over_one_stale_lock_do_not_both_win(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runlock.lock_path(tmp_path).write_text(_lock_of(dead.pid))
    context = multiprocessing.get_context("fork")
    ready, done, results = context.Barrier(2), context.Event(), context.Queue()
    trainers = [
        context.Process(target=_take_stale_lock, args=(tmp_path, ready, done, results))
        for _ in range(2)
    ]
    for trainer in trainers:
        trainer.start()
    try:
        outcomes = sorted(results.get(timeout=30) for _ in trainers)
        assert [what for what, _ in outcomes] == ["refused", "took"], outcomes
        winner = outcomes[1][1]
        assert runlock.read_owner(runlock.lock_path(tmp_path)).pid == winner
    finally:
        done.set()
        for trainer in trainers:
            trainer.join(30)
