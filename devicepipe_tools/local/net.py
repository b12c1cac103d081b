"""Loopback ports for the local stack's servers."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepting(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_listening(port: int, timeout_s: float = 10) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if accepting(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing started listening on port {port}")


def port_plan(base: int, regions: Sequence[str]) -> dict[str, int]:
    """The fixed ports of ``local up --port base``: moto on ``base``, then Redis, the registry's PostgreSQL and
    each region's read API, in that order (Redis and the registry take theirs even when given as URLs)."""
    services = ["moto", "redis", "registry", *(f"read API {region}" for region in regions)]
    return {service: base + i for i, service in enumerate(services)}


def in_use(port: int) -> bool:
    """Whether a server could not listen on 127.0.0.1:``port`` now. Bound as servers bind (SO_REUSEADDR), so
    that a connection of an earlier run still in TIME_WAIT does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False
