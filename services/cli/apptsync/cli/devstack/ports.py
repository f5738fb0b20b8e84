"""Free TCP ports on the loopback interface.

A port picked here is free at the moment it is picked; the process that binds it later can lose a race
against another program. That is acceptable for a developer machine and the tests: the readiness probe
then fails with the service's log tail, which names the port.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Final

LOOPBACK_HOST: Final[str] = "127.0.0.1"


def pick_free_ports(count: int, host: str = LOOPBACK_HOST) -> list[int]:
    """Returns `count` distinct ports that were free on `host` (the OS chose them by binding port 0).

    All sockets stay bound until every port is chosen, so the ports are pairwise distinct.
    Raises OSError when the host cannot be bound.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    with contextlib.ExitStack() as sockets:
        ports = []
        for _ in range(count):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def pick_free_port(host: str = LOOPBACK_HOST) -> int:
    """One port that was free on `host` (see `pick_free_ports`)."""
    return pick_free_ports(1, host)[0]


def port_is_free(port: int, host: str = LOOPBACK_HOST) -> bool:
    """True when a TCP socket can bind `host:port` right now (SO_REUSEADDR, like servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(
    preferred: int | None,
    *,
    is_free: Callable[[int], bool],
    pick_free: Callable[[], int],
) -> int:
    """The preferred port when it is free, otherwise a freshly picked one (pure decision, I/O injected).

    `preferred` None or 0 means "no preference".
    """
    if preferred and is_free(preferred):
        return preferred
    return pick_free()


def preferred_or_free_port(preferred: int | None, host: str = LOOPBACK_HOST) -> int:
    """`preferred` when it can be bound on `host`, else any free port (e.g. the gateway prefers 50051)."""
    return choose_port(
        preferred,
        is_free=lambda port: port_is_free(port, host),
        pick_free=lambda: pick_free_port(host),
    )
