"""Atomic file writes: a file appears whole under its name or not at all.

Every writer of aeatrain writes through here (images, JSON, weights, packages), so a
crash, a full disk or a kill leaves the old file or none, never half of one. Kept apart
from the image codecs (aeatrain/files/images.py): writers of text and JSON need no
OpenCV or tifffile.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aeatrain.errors import UserError, reporting_write_errors


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode a plain ``open(..., "w")`` would give."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Nothing is left behind on failure, and an existing ``target`` is refused unless
    ``overwrite`` (raises :class:`UserError` naming it). A full disk or a read-only
    folder raises :class:`UserError` naming ``target``.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists (use --overwrite to replace it)")
    with reporting_write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
        )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with reporting_write_errors(target):
            yield tmp
            tmp.chmod(_default_file_mode())  # mkstemp makes 0600; give the usual umask mode
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str, *, overwrite: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"), overwrite=overwrite)
