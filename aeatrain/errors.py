"""User-facing errors: one clear line and a non-zero exit, never a traceback.

Anything a user can cause (a bad path, an unreadable image, a wrong config key, a
corrupt shard) raises :class:`UserError` or a subclass with a message that names the
file or key. Command-line entry points wrap their ``main`` with :func:`run_cli`, which
prints ``error: <message>`` to stderr and exits with :data:`EXIT_USER_ERROR`. Bugs
(any other exception) still raise with their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error the user caused and can fix; its message is shown as one line."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line ``main`` and turn a :class:`UserError` into one line + exit 2."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
