"""One trainer per run folder: ``RUN/trainer.lock`` names the process that trains there.

Two trainers on one run folder (a second ``--resume`` while the first still runs, or a job
requeued before the old one died) would interleave their checkpoints and overwrite each
other's weights. The main process of a run (rank 0; the other ranks of a DDP run share its
folder and take no lock) creates the lock file before its first write and removes it when
it stops, with any exit code. The file holds

    {"pid": 1234, "host": "node07", "start_ticks": 567890, "since": "2026-12-01T23:00:00Z"}

``start_ticks`` is the process's start time in clock ticks after boot (/proc/PID/stat),
so a pid that was reused by another process after a crash is not taken for the trainer.
A lock whose process is gone on this host is stale (SIGKILL, a node crash): it is taken
over with a warning. A lock of another host cannot be checked from here, so it is
refused; the message says which file to delete once that trainer is known to be dead.
So is a lock file that cannot be read as one (not JSON, a folder): a trainer publishes
its lock whole (a hard link of a written file), so such a file is not a trainer's
half-written lock but something this module cannot judge.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from aeatrain.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"


class RunLockedError(UserError):
    """Another live trainer holds the run folder; the message names it and the lock file."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    start_ticks: int | None  # None where /proc is not readable
    since: str

    @classmethod
    def this_process(cls) -> LockOwner:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            start_ticks=_start_ticks(os.getpid()),
            since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def is_alive(self) -> bool:
        """False only when the owner is known to be gone: same host, no such process."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, belongs to someone else
        ticks = _start_ticks(self.pid)
        return self.start_ticks is None or ticks is None or ticks == self.start_ticks


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def read_owner(path: Path) -> LockOwner | None:
    """The lock's owner; None for no file; :class:`RunLockedError` saying what to do for a
    file that is not a readable lock (it is never taken over: whose it is is unknown)."""
    try:
        raw = json.loads(path.read_text())
        return LockOwner(
            pid=int(raw["pid"]), host=str(raw["host"]),
            start_ticks=raw.get("start_ticks"), since=str(raw.get("since", "?")),
        )  # fmt: skip
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        problem = "is a folder, not a lock file"
    except OSError as err:
        problem = f"cannot be read ({err.strerror})"
    except (ValueError, KeyError, TypeError):  # JSONDecodeError, UnicodeDecodeError included
        problem = "is not a lock file aeatrain wrote (unreadable)"
    raise RunLockedError(
        f"{path}: {problem}; if no trainer is running in this run folder, delete it and run "
        f"the command again"
    )


def check_unlocked(run_dir: str | Path) -> None:
    """Raise :class:`RunLockedError` while a live trainer holds ``run_dir``; writes nothing."""
    path = lock_path(run_dir)
    owner = read_owner(path)
    if owner is not None and owner.pid != os.getpid() and owner.is_alive():
        raise RunLockedError(
            f"{path}: the run folder is in use by another trainer (pid {owner.pid} on "
            f"{owner.host}, since {owner.since}); wait for it to stop, or delete this file "
            f"if that process is known to be dead"
        )


def acquire(run_dir: str | Path) -> Path:
    """Create ``RUN/trainer.lock`` for this process; refuse a live owner, take over a dead one."""
    path = lock_path(run_dir)
    draft = path.with_name(f".{LOCK_FILE}.{os.getpid()}")
    draft.write_text(json.dumps(asdict(LockOwner.this_process())) + "\n")
    try:
        if _link(draft, path):
            return path
        with _takeovers_one_at_a_time(run_dir):
            if _link(draft, path):  # the owner stopped meanwhile
                return path
            check_unlocked(run_dir)  # a live owner: refused
            stale = read_owner(path)
            log.warning(
                "%s: taking over the lock of pid %s on %s, which is no longer running",
                path, stale.pid if stale else "?", stale.host if stale else "?",
            )  # fmt: skip
            path.unlink(missing_ok=True)
            if _link(draft, path):
                return path
    finally:
        draft.unlink(missing_ok=True)
    check_unlocked(run_dir)  # a trainer that was not taking over linked its lock first
    raise RunLockedError(f"{path}: could not take the lock (another trainer took it first)")


def _link(draft: Path, path: Path) -> bool:
    """Publish ``draft`` as the lock: atomic, never seen half written; False if one exists."""
    try:
        os.link(draft, path)
    except FileExistsError:
        return False
    return True


@contextlib.contextmanager
def _takeovers_one_at_a_time(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on the run folder itself while a stale lock is taken over.
    Two trainers that found the same stale lock would otherwise both remove "it", the
    second removing the first one's new lock, and both would train."""
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the flock


def release(run_dir: str | Path) -> None:
    """Remove the lock if this process holds it (never another trainer's)."""
    path = lock_path(run_dir)
    try:
        owner = read_owner(path)
    except RunLockedError:
        return  # not a lock this process wrote
    if owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname():
        path.unlink(missing_ok=True)
