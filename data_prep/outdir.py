"""Output folders that appear complete or not at all.

``synth`` and ``build`` write into a hidden staging folder beside the target and rename
it onto the target at the very end, so an interrupted run (an exception, Ctrl-C, a
SIGTERM from a scheduler, even SIGKILL) never leaves a half-written dataset under the
name the user asked for. A SIGKILLed run leaves its staging folder behind; the next run
for the same target removes it once its process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aeatrain.errors import UserError, reporting_write_errors
from aeatrain.files.atomic import current_umask
from aeatrain.files.outputs import Marker, check_replaceable_folder

log = logging.getLogger(__name__)

_STAGING_TAG = ".staging-"


def check_target(
    target: Path, marker: Marker, *, overwrite: bool, protect: tuple[Path, ...] = ()
) -> None:
    """Refuse a target that is a file, is not empty (without ``overwrite``; with it,
    unless it holds ``marker``: only our own kind of folder is replaced), holds the
    current folder, or would contain or be contained in one of the ``protect`` folders."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a folder")
    resolved = target.resolve()
    if Path.cwd().is_relative_to(resolved):
        raise UserError(
            f"{target}: is the current folder (or holds it); the output folder is replaced "
            "as a whole at the end, so name one beside it (e.g. --out DATA)"
        )
    for source in protect:
        source = source.resolve()
        if resolved == source or source.is_relative_to(resolved) or resolved.is_relative_to(source):
            what = "folder" if source.is_dir() else "file"
            raise UserError(
                f"{target}: output folder overlaps the source {what} {source}; "
                "choose an output folder outside it"
            )
    check_replaceable_folder(target, marker, overwrite=overwrite)


def _staging_pid(path: Path) -> int | None:
    try:
        return int(path.name.split(_STAGING_TAG, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(target: Path) -> None:
    """Remove staging folders of this target left by runs that were killed."""
    for path in target.parent.glob(f".{target.name}{_STAGING_TAG}*"):
        pid = _staging_pid(path)
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            log.warning("removing %s, left by an interrupted run (process %d)", path, pid)
            shutil.rmtree(path, ignore_errors=True)


def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def staged_output(target: str | os.PathLike, marker: Marker, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` atomically.

    On any exception (SIGTERM included, turned into KeyboardInterrupt while inside) the
    staging folder is removed and ``target`` is left exactly as it was; a full disk or
    a read-only parent folder is one UserError line naming ``target``.
    """
    shown, target = Path(target), Path(target).resolve()  # "." and ".." have no name
    with reporting_write_errors(shown):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(target)
        staging = Path(
            tempfile.mkdtemp(
                prefix=f".{target.name}{_STAGING_TAG}{os.getpid()}-", dir=target.parent
            )
        )
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the result is not
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = _in_main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with reporting_write_errors(shown):
            yield staging
            _replace(staging, target, marker, overwrite=overwrite)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _replace(staging: Path, target: Path, marker: Marker, *, overwrite: bool) -> None:
    """Rename ``staging`` onto ``target``; an old target goes only after the rename."""
    if target.exists() and any(target.iterdir()):
        check_replaceable_folder(target, marker, overwrite=overwrite)  # it may have changed
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    if target.exists():
        target.rmdir()
    os.replace(staging, target)
