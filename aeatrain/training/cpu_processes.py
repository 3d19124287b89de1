"""Make ``accelerate launch --cpu --num_processes N`` start N processes.

accelerate 1.x sends ``--cpu`` to its *simple* launcher, which starts ONE process whatever
``--num_processes`` says (multi-process CPU there means ``--mpirun_hostfile``); it only
exports ``MASTER_ADDR``/``MASTER_PORT``. A training script that finds itself in that
situation runs itself under ``torch.distributed.run`` (in this process) with the process count,
machine count and rendezvous that were asked of ``accelerate launch``, read back from
that launcher's own command line with accelerate's own argument parser. The workers keep
``ACCELERATE_USE_CPU``, so ``Accelerator`` sets itself up as MULTI_CPU over gloo.

Signals. The simple launcher does not pass signals on: SIGTERM, SIGINT or SIGUSR1 to it
ends it at once and would leave torchrun and its workers training on as orphans. So the
process it started (torchrun's agent) asks the kernel for SIGTERM when the launcher dies
(``PR_SET_PDEATHSIG``), and torchrun is told to pass SIGUSR1 on like SIGTERM and SIGINT
(``--signals_to_handle``, ``TORCHELASTIC_SIGNALS_TO_HANDLE``). torchrun forwards what it
receives to every worker's process group and waits for them (``--shutdown_timeout``); the
workers checkpoint at the next log step and exit 75 (aeatrain/training/preemption.py).
accelerate 1.16 changed this launcher: it catches SIGTERM and SIGINT, sends SIGTERM to its
whole process tree and SIGKILLs what is left 5 s later; the workers then get SIGTERM
twice (directly and from torchrun), which preemption handles as one, but a checkpoint
taking longer than 5 s is cut short (docs/training.md, Preemption). It also pipes the
workers' stderr through itself, so a signal that kills it (one it does not catch) also
closes the pipe the workers write to (not tested here): signal torchrun or the workers
for the full grace.

Exit status and messages. torchrun runs in this process (:func:`run_torchrun`) rather than
being exec'ed: a worker that stopped on a user error (exit 2, its one line printed) or a
preemption (exit 75) ends this process with that status, where torchrun would add its
own traceback and exit 1 (a crash still raises torchrun's error). ``accelerate launch``
itself then still reports a non-zero exit of its child with a traceback and exit 1 (unless
given ``-q``); ``launch/local.sh`` on CPUs starts the processes through
``python -m aeatrain.cpu_launch --num_processes N SCRIPT ...`` (the command over
:func:`run_torchrun`) instead, so its exit
status is the trainer's. A single machine with no ``--main_process_port`` rendezvouses
on a free port (two CPU runs side by side no longer collide on 29500).

Plain ``torchrun`` is no substitute. Without ``ACCELERATE_USE_CPU`` in the workers'
environment each ``Accelerator`` finds no GPU and runs alone (N independent runs writing
one RUN folder; ``accelerate launch --multi_gpu`` on a CPU machine does the same); with
it they form a gloo group, but a worker's user error or preemption ends torchrun with its
ChildFailedError traceback and exit 1 instead of the one line and exit 2 or 75.

Nothing here knows about ``Accelerator``; train.py calls :func:`relaunch_cpu_multiprocess`
first thing in ``main``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aeatrain.errors import EXIT_USER_ERROR, error_marker
from aeatrain.training.preemption import EXIT_PREEMPTED

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGUSR1,SIGHUP,SIGQUIT"  # torchrun's default + SIGUSR1
SHUTDOWN_TIMEOUT_SECONDS = 120  # torchrun's grace for a checkpoint before it SIGKILLs
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class CpuLaunch:
    """What ``accelerate launch --cpu`` was asked for."""

    num_processes: int
    num_machines: int
    machine_rank: int
    main_process_ip: str
    main_process_port: int | None  # None: one machine, none given (a free one is used)

    @property
    def processes_per_machine(self) -> int:
        return max(self.num_processes // self.num_machines, 1)


def _launcher_argv(parent_cmdline: list[str]) -> list[str] | None:
    """The arguments after ``launch`` in an ``accelerate launch ...`` command line."""
    for i, token in enumerate(parent_cmdline):
        name = Path(token).name
        if (
            name == "accelerate-launch"
            or token in ("accelerate.commands.launch",)
            or token.endswith("accelerate/commands/launch.py")
        ):
            return parent_cmdline[i + 1 :]
        if token == "launch" and i > 0 and "accelerate" in Path(parent_cmdline[i - 1]).name:
            return parent_cmdline[i + 1 :]
    return None


def parse_cpu_launch(parent_cmdline: list[str], env: dict[str, str]) -> CpuLaunch | None:
    """The request behind a single-process ``--cpu`` launch, or None if nothing to fix."""
    argv = _launcher_argv(parent_cmdline)
    if argv is None:
        return None
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args(argv)
    num_processes = args.num_processes or 1
    num_machines = args.num_machines or 1
    if num_processes <= 1 and num_machines <= 1:
        return None
    # The launcher exports MASTER_PORT=29500 when no port was given, so only its own
    # argument says one was chosen; machines that must agree on a port get 29500.
    port = args.main_process_port
    if port is None and num_machines > 1:
        port = int(env.get("MASTER_PORT", 29500))
    return CpuLaunch(
        num_processes=num_processes,
        num_machines=num_machines,
        machine_rank=args.machine_rank or 0,
        main_process_ip=args.main_process_ip or env.get("MASTER_ADDR", "127.0.0.1"),
        main_process_port=None if port is None else int(port),
    )


def _parent_cmdline() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def needs_relaunch(env: dict[str, str]) -> bool:
    """True for a process started by accelerate's simple launcher under ``--cpu``."""
    launched_by_accelerate = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    already_distributed = any(key in env for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE"))
    return launched_by_accelerate and not already_distributed


def relaunch_cpu_multiprocess(script: str, script_args: list[str]) -> None:
    """Run ``script`` under torchrun when a ``--cpu`` launch asked for N > 1 processes.

    Returns (doing nothing) in every other case; otherwise exits with the workers' status
    (:func:`run_torchrun`) once they have stopped.
    """
    env = dict(os.environ)
    if not needs_relaunch(env):
        return
    request = parse_cpu_launch(_parent_cmdline(), env)
    if request is None:
        return
    log.info(
        "accelerate --cpu started 1 process; starting %d here via torch.distributed.run",
        request.processes_per_machine,
    )
    rendezvous = [f"--nnodes={request.num_machines}", f"--node_rank={request.machine_rank}"]
    if request.main_process_port is not None:
        rendezvous += [f"--master_addr={request.main_process_ip}",
                       f"--master_port={request.main_process_port}"]  # fmt: skip
    die_with_parent()
    sys.exit(run_torchrun(request.processes_per_machine, rendezvous, [script, *script_args]))


def run_torchrun(processes: int, rendezvous: list[str], command: list[str]) -> int:
    """``torchrun --nproc_per_node PROCESSES RENDEZVOUS COMMAND`` in this process, which
    becomes the workers' agent; returns the exit status for this process.

    Without ``--master_port`` (and one machine) torchrun rendezvouses on a free port. The
    status is 0, or 2 when a worker stopped on a user error (each printed its line), or 75
    when the workers stopped on a preemption; torchrun would print a traceback for these
    and exit 1. A signal to this process returns 128 + its number, as a shell reports
    it; any other failure raises torchrun's own error, naming the failed ranks.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    sys.stdout.flush()
    sys.stderr.flush()
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = FORWARDED_SIGNALS
    args = parse_args([
        f"--shutdown_timeout={SHUTDOWN_TIMEOUT_SECONDS}", f"--signals_to_handle={FORWARDED_SIGNALS}",
        f"--nproc_per_node={processes}", *rendezvous, command[0],
    ])  # fmt: skip
    args.training_script_args = command[1:]  # not parsed: torchrun takes --run for --run-path
    agent_log = logging.getLogger("torch.distributed.elastic")
    agent_log.setLevel(logging.CRITICAL)  # its "failed (exitcode: 2)" lines; crashes raise
    try:
        run(args)
    except ChildFailedError as err:
        codes = {failure.exitcode for failure in err.failures.values()}
        if EXIT_USER_ERROR in codes:
            return EXIT_USER_ERROR
        if codes == {EXIT_PREEMPTED}:
            return EXIT_PREEMPTED
        raise
    except SignalException as err:
        return 128 + err.sigval
    finally:
        _remove_error_markers()
    return 0


def _remove_error_markers() -> None:
    """The workers' :func:`aeatrain.errors.report_once` markers, once they have stopped."""
    for marker in error_marker(os.getpid()).parent.glob(error_marker(os.getpid()).name):
        marker.unlink(missing_ok=True)


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent (the launcher) dies.

    Linux only (elsewhere nothing happens). The setting survives ``exec``. A parent that
    died before the call is caught by comparing the parent pid before and after.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    elif os.getppid() != parent:
        os.kill(os.getpid(), signum)
