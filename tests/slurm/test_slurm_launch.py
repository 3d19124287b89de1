"""The SLURM job scripts on a real SLURM (two logical nodes on 127.0.0.1, tests/slurm/cluster.py).

Covered: 2 nodes x 1 CPU process training as one process group; preemption (USR1 to the
batch script -> checkpoint -> requeue -> the restarted job resumes at the saved step into
the same run folder and TensorBoard run, log appended); the self-training job array over
3 pairs and the gathered table; bad input refused at the top of the job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.datasets import make_dataset
from tests.ports import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEBUG = REPO / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("slurmdata") / "DATA", pairs=3)


def _job_env(slurm, **extra: str) -> dict[str, str]:
    """What a user's shell would hold: the venv's Python, CPU training, one thread each."""
    env = dict(slurm.env)
    env.update(
        PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        AEATRAIN_CPU="1",
        OMP_NUM_THREADS="1",
        HF_HOME="/nonexistent-hf-home",  # no accelerate default_config.yaml of the user
        MASTER_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def _sbatch(slurm, tmp_path, *args: str, env=None, wait: bool = False) -> tuple[str, Path]:
    """Submit from the checkout (as users do); return (job id, its output file)."""
    output = tmp_path / "job-%j.out"
    command = ["sbatch", "--parsable", f"--output={output}", *args]
    result = subprocess.run(command, env=env or _job_env(slurm), cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    if wait:  # sbatch --wait polls every 10 s; poll faster
        _wait_for(lambda: _finished(slurm, job_id), 600, f"job {job_id} to finish", poll=0.5)
    return job_id, Path(str(output).replace("%j", job_id))


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _state(slurm, job_id: str) -> str:
    return slurm.job_state(job_id).get("JobState", "?")


def _finished(slurm, job_id: str) -> bool:
    return _state(slurm, job_id) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def test_two_nodes_train_as_one_process_group(slurm, data, tmp_path):
    run_dir = tmp_path / "run"
    job_id, output = _sbatch(
        slurm, tmp_path, "--nodes=2", str(REPO / "launch/slurm/train.sbatch"), str(DEBUG),
        str(run_dir), "--data.root", str(data), "--train.steps", "20", wait=True,
    )  # fmt: skip
    log = output.read_text()
    assert _state(slurm, job_id) == "COMPLETED", log[-3000:]
    assert "2 node(s) x 1 process(es)" in log
    assert "2 process(es), MULTI_CPU" in log  # the trainer saw one group of world size 2
    checkpoint = run_dir / "checkpoints" / "step_20"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]  # fmt: skip
    assert json.loads((run_dir / "run.json").read_text())["step"] == 20
    assert (run_dir / "model.safetensors").is_file()


def test_preemption_checkpoints_requeues_and_resumes(slurm, data, tmp_path):
    run_dir = tmp_path / "run"
    steps = 400
    job_id, output = _sbatch(
        slurm, tmp_path, "--nodes=2", str(REPO / "launch/slurm/train.sbatch"), str(DEBUG),
        str(run_dir), "--data.root", str(data), "--train.steps", str(steps),
        "--train.checkpoint_every", "1000", "--logging.eval_every", "1000",
    )  # fmt: skip
    _wait_for(lambda: output.exists() and re.search(r"step \d+: loss", output.read_text()),
              240, "the first logged training step")  # fmt: skip
    slurm.run("scancel", "--signal=USR1", "--batch", job_id)  # as --signal=B:USR1@T does
    _wait_for(lambda: slurm.job_state(job_id).get("Restarts", "0") != "0"
              or "requeueing job" in output.read_text(), 180, "the requeue")  # fmt: skip
    # The requeued job starts again by itself after the cluster's cred_expire (10 s here).
    _wait_for(lambda: _finished(slurm, job_id), 400, "the resumed job to finish", poll=1)

    log = output.read_text()
    assert _state(slurm, job_id) == "COMPLETED", log[-3000:]
    assert "restart 0:" in log and "restart 1:" in log  # one log, appended
    saved = int(re.search(r"checkpoint written on preemption", log) and
                re.findall(r"checkpoints/step_(\d+)", log)[0])  # fmt: skip
    assert 0 < saved < steps
    assert re.search(rf"resum\w* .*step {saved}\b", log), log[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["step"] == steps
    assert not (run_dir / "preempted.json").exists()
    assert len(list((run_dir / "logs").iterdir())) == 1  # the same TensorBoard run


def test_self_training_array_and_gathered_table(slurm, data, tmp_path):
    out_root = tmp_path / "self"
    env = _job_env(slurm, SBATCH_ARGS=f"--output={tmp_path}/array-%A_%a.out")
    result = subprocess.run(
        [str(REPO / "launch/slurm/selftrain.sh"), str(data), str(out_root), "--max-parallel",
         "2", "--config", str(DEBUG), "--", "--train.steps", "10"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    array_id = re.search(r"array (\d+)", result.stdout).group(1)
    gather = result.stdout.strip().splitlines()[-1].strip()
    # throttled to 2 at a time: scontrol shows "ArrayTaskThrottle=2", and "%2" in the range of
    # tasks still pending only while two or more are (one left pending reads "ArrayTaskId=2")
    shown = slurm.run("scontrol", "show", "job", array_id)
    assert re.search(r"ArrayTaskThrottle=2\b", shown), shown
    _wait_for(lambda: not slurm.run("squeue", "-h", "-j", array_id, check=False).strip(), 400,
              "the array to finish", poll=1)  # fmt: skip
    runs = sorted(p.name for p in out_root.iterdir())
    assert runs == ["pair00", "pair01", "pair02"], list(tmp_path.glob("array-*.out"))
    for name in runs:
        config = (out_root / name / "config.yaml").read_text()
        assert f"- {name}" in config  # trained on its own pair only
    table = subprocess.run(gather, shell=True, env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    metrics = (out_root / "metrics.md").read_text()
    rows = [line for line in metrics.splitlines() if line.startswith("| self-training")]
    assert len(rows) == 1 and "(3 runs" in rows[0]  # one row: 3 pairs, one model each
    assert [cell.strip() for cell in rows[0].split("|")][4] == "3"  # the pairs column


@pytest.mark.parametrize("what", ["config", "data"])
def test_bad_input_is_refused_at_the_top_of_the_job(slurm, data, tmp_path, what):
    config = tmp_path / "absent.yaml" if what == "config" else DEBUG
    root = tmp_path / "absent-data" if what == "data" else data
    job_id, output = _sbatch(
        slurm, tmp_path, "--nodes=2", str(REPO / "launch/slurm/train.sbatch"), str(config),
        str(tmp_path / "run"), "--data.root", str(root), wait=True,
    )  # fmt: skip
    log = output.read_text()
    assert slurm.job_state(job_id)["ExitCode"] == "2:0", log
    assert "nothing was started" in log and str(config if what == "config" else root) in log
    assert "rendezvous" not in log and not (tmp_path / "run").exists()


def test_prep_job_builds_the_dataset_on_a_node(slurm, tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "DATA"
    subprocess.run(
        [sys.executable, "-m", "data_prep", "synth", "--out", str(raw), "--pairs", "2",
         "--seed", "3", "--width", "320", "--height", "240"],
        env=_job_env(slurm), cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    job_id, output = _sbatch(
        slurm, tmp_path, "--cpus-per-task=1", str(REPO / "launch/slurm/prep.sbatch"), str(raw),
        str(data), "--bar-row", "240", wait=True,
    )  # fmt: skip
    assert _state(slurm, job_id) == "COMPLETED", output.read_text()[-3000:]
    manifest = json.loads((data / "manifest.json").read_text())
    assert sorted(manifest["pairs"]) == ["syn000", "syn001"]
    job_id, output = _sbatch(
        slurm, tmp_path, "--cpus-per-task=1", str(REPO / "launch/slurm/prep.sbatch"),
        str(tmp_path / "nope"), str(tmp_path / "D2"), wait=True,
    )  # fmt: skip
    assert slurm.job_state(job_id)["ExitCode"] == "2:0"
    assert "nope: no such folder" in output.read_text()
