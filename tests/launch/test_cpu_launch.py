"""``accelerate launch --cpu --num_processes 2`` really gives two gloo processes."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch.distributed.run as torch_run
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from aeatrain.errors import report_once
from aeatrain.training import cpu_processes
from aeatrain.training.cpu_processes import needs_relaunch, parse_cpu_launch
from tests.ports import default_port_taken

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import os, sys
sys.path.insert(0, {repo!r})
from aeatrain.training.cpu_processes import relaunch_cpu_multiprocess
relaunch_cpu_multiprocess(__file__, sys.argv[1:])
from accelerate import Accelerator
import torch
acc = Accelerator(cpu=True)
value = torch.tensor([acc.process_index + 1.0])
total = acc.reduce(value, reduction="sum").item()
line = (f"rank={{acc.process_index}} world={{acc.num_processes}} type={{acc.distributed_type}} "
        f"sum={{total}} args={{sys.argv[1:]}}")
open(f"rank{{acc.process_index}}.txt", "w").write(line)  # own file: stdout lines interleave
# As train.py does: a gloo group left alive at interpreter exit aborts the process now and
# then ("terminate called without an active exception", exit -6; 1 run in 12 here).
acc.end_training()
"""


def test_parse_reads_accelerates_own_arguments():
    cmd = [
        "/venv/bin/python",
        "/venv/bin/accelerate",
        "launch",
        "--cpu",
        "--num_processes",
        "4",
        "--num_machines",
        "2",
        "--machine_rank",
        "1",
        "--main_process_ip",
        "10.0.0.1",
        "--main_process_port",
        "1234",
        "train.py",
        "--num_processes",
        "99",
    ]
    request = parse_cpu_launch(cmd, {})
    assert (request.num_processes, request.num_machines, request.machine_rank) == (4, 2, 1)
    assert (request.main_process_ip, request.main_process_port) == ("10.0.0.1", 1234)
    assert request.processes_per_machine == 2
    as_module = [
        "python3",
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "t.py",
    ]
    # one machine, no --main_process_port: the launcher's MASTER_PORT (always 29500) is not
    # a choice, a free port is used; machines that must agree take it
    assert parse_cpu_launch(as_module, {"MASTER_PORT": "29500"}).main_process_port is None
    two_machines = [*as_module[:-1], "--num_machines", "2", "t.py"]
    assert parse_cpu_launch(two_machines, {"MASTER_PORT": "4321"}).main_process_port == 4321


def test_single_process_and_foreign_parents_are_left_alone():
    assert parse_cpu_launch(["/bin/bash", "run.sh"], {}) is None
    assert parse_cpu_launch(["accelerate", "launch", "--cpu", "t.py"], {}) is None
    assert not needs_relaunch({"ACCELERATE_USE_CPU": "True", "LOCAL_RANK": "0"})
    assert not needs_relaunch({})
    assert needs_relaunch({"ACCELERATE_USE_CPU": "True"})


CHILD = """
import signal, sys, time
sys.path.insert(0, {repo!r})
from aeatrain.training.cpu_processes import die_with_parent
signal.signal(signal.SIGTERM, lambda *_: (open({marker!r}, "w").write("TERM"), sys.exit(0)))
die_with_parent()
print("ready", flush=True)
time.sleep(60)
"""
PARENT = """
import signal, subprocess, sys, time
# A shell that starts a job in the background without job control (CI, `cmd &` in a
# script) hands it SIGINT ignored; a launcher started from a terminal has the default.
signal.signal(signal.SIGINT, signal.default_int_handler)
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout)
print(child.pid, flush=True)
child.wait()  # like accelerate's simple launcher: no signal handling of its own
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_that_ends_the_launcher_reaches_the_relaunched_process(tmp_path, signum):
    marker = tmp_path / "child_got_sigterm"
    child = CHILD.format(repo=str(REPO), marker=str(marker))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    child_pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    parent.send_signal(signum)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while child_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if child_alive(child_pid):
        os.kill(child_pid, signal.SIGKILL)
    assert marker.exists() and marker.read_text() == "TERM"


def child_alive(pid: int) -> bool:
    """The orphaned child (not ours to wait for) still runs: /proc/PID exists, not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_relaunch_has_torchrun_forward_sigusr1_and_wait_for_the_checkpoint(monkeypatch):
    launcher = ["python3", "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                "train.py"]  # fmt: skip
    monkeypatch.setattr(cpu_processes, "_parent_cmdline", lambda: launcher)
    monkeypatch.setattr(cpu_processes, "die_with_parent", lambda: None)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("MASTER_PORT", "29500")  # what the launcher exports when none is given
    started = {}
    monkeypatch.setattr(torch_run, "run", lambda args: started.update(args=args))
    with pytest.raises(SystemExit) as stop:
        cpu_processes.relaunch_cpu_multiprocess("train.py", ["--config", "c.yaml", "--run", "x"])
    args = started["args"]
    assert stop.value.code == 0
    assert {"SIGTERM", "SIGINT", "SIGUSR1"} <= set(args.signals_to_handle.split(","))
    assert set(os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"].split(",")) >= {"SIGUSR1"}
    assert args.nproc_per_node == "2"
    assert args.shutdown_timeout == cpu_processes.SHUTDOWN_TIMEOUT_SECONDS
    # issue 23 item 20: no port given, so none passed: torchrun rendezvouses on a free one
    assert args.master_port is None and args.nnodes == "1"
    assert [args.training_script, *args.training_script_args] == [
        "train.py", "--config", "c.yaml", "--run", "x"]  # fmt: skip


def _failed(*codes):
    failures = {rank: ProcessFailure(rank, rank, code, "") for rank, code in enumerate(codes)}
    return ChildFailedError("train.py", failures)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(None, 0), (_failed(2, -15), 2), (_failed(75, 75), 75), (SignalException("", 15), 143)],
)
def test_workers_user_errors_and_preemptions_keep_their_exit_status(monkeypatch, outcome, status):
    """Issue 23 item 20: torchrun printed a traceback after the one line and exited 1."""

    def run(args):
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(torch_run, "run", run)
    assert cpu_processes.run_torchrun(2, ["--nnodes=1"], ["train.py"]) == status


def test_a_crashed_worker_still_raises_torchruns_error(monkeypatch):
    def run(args):
        raise _failed(1)

    monkeypatch.setattr(torch_run, "run", run)
    with pytest.raises(ChildFailedError):
        cpu_processes.run_torchrun(2, ["--nnodes=1"], ["train.py"])


def test_ranks_failing_with_the_same_line_print_it_once(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for line in ("error: a\n", "error: a\n", "error: b\n"):  # rank 0, rank 1, another rank
        report_once(line)
    assert capsys.readouterr().err == "error: a\nerror: b\n"
    monkeypatch.setenv("WORLD_SIZE", "1")
    report_once("error: a\n")  # one process: always
    assert capsys.readouterr().err == "error: a\n"


@pytest.mark.slow
def test_cpu_launch_starts_two_gloo_processes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(repo=str(REPO)))
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    with default_port_taken():  # issue 23 item 20: no port given, 29500 in use: a free one
        result = subprocess.run(
            [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", str(probe), "--x", "1"],
            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
        )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "error" in line]
    assert result.returncode == 0, "\n".join(errors[:40]) + result.stderr[-1500:]
    lines = sorted(path.read_text() for path in tmp_path.glob("rank*.txt"))
    assert lines == [
        "rank=0 world=2 type=DistributedType.MULTI_CPU sum=3.0 args=['--x', '1']",
        "rank=1 world=2 type=DistributedType.MULTI_CPU sum=3.0 args=['--x', '1']",
    ]
