"""User-facing errors: one clear line and a non-zero exit, never a traceback.

Anything a user can cause (a bad path, an unreadable image, a wrong config key, a
corrupt shard) raises :class:`UserError` or a subclass with a message that names the
file or key. Command-line entry points wrap their ``main`` with :func:`run_cli`, which
prints ``error: <message>`` to stderr and exits with :data:`EXIT_USER_ERROR`. Bugs
(any other exception) still raise with their traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_USER_ERROR = 2
MAX_MESSAGE_CHARS = 2000  # one line a person reads; longer ones are cut in the middle

# OSErrors of writing that the user fixes (free space, permissions), not bugs
_WRITE_PROBLEMS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the size limit (ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class UserError(Exception):
    """An error the user caused and can fix; its message is shown as one line."""


class OutputWriteError(UserError, OSError):
    """A write refused for want of space or permission: one line for the user, and still
    an OSError (its ``errno``, ``strerror``) for code that handles failed writes itself."""

    def __init__(self, message: str, err: OSError):
        super().__init__(message)
        self.errno, self.strerror, self.filename = err.errno, err.strerror, err.filename

    def __str__(self) -> str:
        return self.args[0]


@contextlib.contextmanager
def reporting_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Inside, an OSError of a full disk or a read-only/forbidden folder becomes one
    UserError line naming ``path`` (the output being written); other OSErrors still raise."""
    try:
        yield
    except OutputWriteError:
        raise  # reported already, by an inner write
    except OSError as err:
        problem = _WRITE_PROBLEMS.get(err.errno)
        if problem is None:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise OutputWriteError(f"{path}: cannot write: {problem}{where}", err) from None


def capped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` at most about ``limit`` characters long: an over-long middle (a value
    quoted whole, say) is cut, saying how much."""
    if len(message) <= limit:
        return message
    keep = limit // 2
    cut = len(message) - 2 * keep
    return f"{message[:keep]} [... {cut:,} characters cut ...] {message[-keep:]}"


def report_once(line: str) -> None:
    """Write ``line`` to stderr in one write (lines of processes failing together do not
    interleave). Among the processes of one launch (torchrun's workers, which share their
    parent, the agent), only the first to fail with this very line writes it: every rank
    refusing the same config prints it once, a rank failing otherwise prints its own. The
    marker that says so is :func:`error_marker`, a file in the temporary folder."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        try:
            os.close(os.open(error_marker(os.getppid(), line), os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return  # another rank of this launch wrote the same line
        except OSError:
            pass  # no temporary folder: every rank writes its line
    sys.stderr.flush()
    sys.stderr.write(line)
    sys.stderr.flush()


def error_marker(agent_pid: int, line: str = "") -> Path:
    """The marker of ``line`` reported by a worker of the agent ``agent_pid``; with no
    line, the pattern of all of them (``glob``)."""
    digest = hashlib.sha256(line.encode(errors="replace")).hexdigest()[:24] if line else "*"
    return Path(tempfile.gettempdir()) / f"aeatrain-error-{agent_pid}-{digest}"


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line ``main`` and turn a :class:`UserError` into one line + exit 2."""
    try:
        code = main()
    except UserError as err:
        report_once(f"error: {capped(str(err))}\n")
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


MAX_SEED = 2**32 - 1  # the widest range every generator takes (numpy's legacy, torch's)


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed`` when it is in 0..MAX_SEED; else a UserError naming ``option``."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{option} {seed}: a seed is a whole number from 0 to {MAX_SEED}")
    return seed


def check_finite_options(args) -> None:
    """Refuse nan and inf in every float option of parsed ``args`` (argparse's float takes
    them, and every comparison with nan is false: ``--max-error nan`` would pass all)."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} {value}: must be a finite number")
