"""``python -m aeatrain.cpu_launch --num_processes N SCRIPT [ARGS ...]``: N processes of a
training script on this machine's CPUs, exiting with the workers' status.

launch/local.sh starts CPU runs through it. The processes are started by torchrun in this
process, with the signal forwarding and exit statuses of
:mod:`aeatrain.training.cpu_processes` (which also explains why plain ``torchrun`` is no
substitute).
"""

from __future__ import annotations

import argparse
import os
import sys

from aeatrain.errors import UserError, run_cli
from aeatrain.training.cpu_processes import run_torchrun


def main(argv: list[str] | None = None) -> int:
    """``python -m aeatrain.cpu_launch --num_processes N SCRIPT [ARGS ...]``: N processes of
    SCRIPT on this machine's CPUs (torchrun's rendezvous on a free port), exiting with the
    workers' status; launch/local.sh uses it on machines without GPUs."""
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.cpu_launch", description=main.__doc__.split(":")[0]
    )
    parser.add_argument("--num_processes", type=int, default=1, metavar="N")
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        raise UserError(f"--num_processes {args.num_processes}: must be at least 1")
    if args.num_processes == 1:
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, args.script, *args.script_args])
    return run_torchrun(args.num_processes, ["--nnodes=1"], [args.script, *args.script_args])


if __name__ == "__main__":
    run_cli(main)
