"""Free TCP ports on 127.0.0.1 for the servers and rendezvous that tests start."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open while choosing, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One free port: for a rendezvous, so parallel test runs do not collide on 29500."""
    return free_ports(1)[0]


@contextlib.contextmanager
def default_port_taken(port: int = 29500) -> Iterator[None]:
    """While inside, ``port`` (torch's and accelerate's default rendezvous port) is in use,
    as by another run: held here, or already by someone else."""
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
            sock.listen()
        except OSError:
            pass  # taken already: in use all the same
        yield
