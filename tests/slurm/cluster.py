"""A real SLURM cluster on 127.0.0.1 for the launcher tests.

Starts munge, one ``slurmctld`` and one ``slurmd -N nodeK`` per logical node, all on this
host with distinct ports (docs/scaling.md says what the launcher tests check). The
Debian packages are installed on first use when missing and we are root; otherwise the
tests that need the cluster skip with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_ports

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; tests skip with this reason."""


def ensure_installed() -> None:
    """Install Debian's SLURM and munge packages when they are missing (root only)."""
    if all(shutil.which(cmd) for cmd in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("SLURM is not installed and apt-get as root is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {result.stderr.strip()[-300:]}")


def _start_munge() -> None:
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        if probe.returncode == 0:
            return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(
        ["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True
    )
    for _ in range(50):
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise SlurmUnavailable("munged did not come up")


@dataclass
class LocalSlurm:
    """A running cluster: ``nodes`` logical nodes of ``cpus_per_node`` CPUs, partition debug."""

    root: Path
    nodes: int = 2
    cpus_per_node: int = 1

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctld_port, *node_ports = free_ports(1 + self.nodes)
        lines = [
            "ClusterName=aeatest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={self.root}/ctld",
            f"SlurmdSpoolDir={self.root}/d/%n",
            f"SlurmctldPidFile={self.root}/ctld.pid",
            f"SlurmdPidFile={self.root}/d-%n.pid",
            f"SlurmctldLogFile={self.root}/ctld.log",
            f"SlurmdLogFile={self.root}/d-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "MailProg=/bin/true",
            # Fast turnaround for tests: a requeued job may start again after cred_expire
            # seconds (default 120: the nodes must have forgotten the revoked credential).
            "AuthInfo=cred_expire=10",
            "SchedulerParameters=sched_interval=1",
            "MinJobAge=600",
            "KillWait=5",
        ]
        for name, port in zip(self.node_names(), node_ports):
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 "
                f"Port={port} CPUs={self.cpus_per_node} RealMemory=8000"
            )
        lines.append(
            f"PartitionName=debug Nodes={','.join(self.node_names())} Default=YES "
            "MaxTime=INFINITE State=UP"
        )
        (self.root / "ctld").mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 60) -> LocalSlurm:
        ensure_installed()
        _start_munge()
        self.write_conf()
        subprocess.run(
            ["slurmctld", "-f", str(self.conf)], check=True, env=self.env, capture_output=True
        )
        for name in self.node_names():
            (self.root / "d" / name).mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["slurmd", "-f", str(self.conf), "-N", name],
                check=True,
                env=self.env,
                capture_output=True,
            )
        self._wait_idle(timeout_s)
        return self

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        states = ""
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            states = result.stdout.split()
            if len(states) == self.nodes and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        self.stop()
        raise SlurmUnavailable(
            f"nodes not idle after {timeout_s} s (states {states}); see {self.root}/ctld.log"
        )

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        for pid_file in self.root.glob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().strip()), 15)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run a SLURM client command against this cluster; return its stdout."""
        result = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def job_state(self, job_id: str) -> dict[str, str]:
        """Fields of ``scontrol show job`` as a dict (JobState, RestartCnt, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id)
        fields = {}
        for token in text.split():
            key, _, value = token.partition("=")
            fields[key] = value
        return fields
