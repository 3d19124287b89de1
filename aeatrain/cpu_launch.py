"""Make ``accelerate launch --cpu --num_processes N`` start N processes.

accelerate 1.x sends ``--cpu`` to its *simple* launcher, which starts ONE process whatever
``--num_processes`` says (multi-process CPU there means ``--mpirun_hostfile``); it only
exports ``MASTER_ADDR``/``MASTER_PORT``. A training script that finds itself in that
situation re-executes itself under ``torch.distributed.run`` with the process count,
machine count and rendezvous that were asked of ``accelerate launch``, read back from
that launcher's own command line with accelerate's own argument parser. The workers keep
``ACCELERATE_USE_CPU``, so ``Accelerator`` sets itself up as MULTI_CPU over gloo.

Signals. The simple launcher does not pass signals on: SIGTERM, SIGINT or SIGUSR1 to it
ends it at once and would leave torchrun and its workers training on as orphans. So the
re-executed process asks the kernel for SIGTERM when the launcher dies
(``PR_SET_PDEATHSIG``, kept across ``exec``), and torchrun is told to pass SIGUSR1 on like
SIGTERM and SIGINT (``TORCHELASTIC_SIGNALS_TO_HANDLE``). torchrun forwards what it
receives to every worker's process group and waits for them (``--shutdown_timeout``); the
workers checkpoint at the next step boundary and exit 75 (aeatrain/training/preemption.py).
accelerate 1.16 changed this launcher: it catches SIGTERM and SIGINT, sends SIGTERM to its
whole process tree and SIGKILLs what is left 5 s later; the workers then get SIGTERM
twice (directly and from torchrun), which preemption handles as one, but a checkpoint
taking longer than 5 s is cut short (docs/training.md, Preemption). It also pipes the
workers' stderr through itself, so a signal that kills it (one it does not catch) also
closes the pipe the workers write to (not tested here): signal torchrun or the workers
for the full grace.

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
    main_process_port: int

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
    return CpuLaunch(
        num_processes=num_processes,
        num_machines=num_machines,
        machine_rank=args.machine_rank or 0,
        main_process_ip=args.main_process_ip or env.get("MASTER_ADDR", "127.0.0.1"),
        main_process_port=int(args.main_process_port or env.get("MASTER_PORT", 29500)),
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
    """Re-exec under ``torch.distributed.run`` when a ``--cpu`` launch asked for N > 1 processes.

    Returns (doing nothing) in every other case; does not return when it re-executes.
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
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--shutdown_timeout={SHUTDOWN_TIMEOUT_SECONDS}",
        f"--nproc_per_node={request.processes_per_machine}",
        f"--nnodes={request.num_machines}",
        f"--node_rank={request.machine_rank}",
        f"--master_addr={request.main_process_ip}",
        f"--master_port={request.main_process_port}",
        script, *script_args,
    ]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    die_with_parent()
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = FORWARDED_SIGNALS
    os.execv(sys.executable, command)


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
