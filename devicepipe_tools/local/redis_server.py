"""The local stack's Redis: ``REDIS_URL`` when given, else a real ``redis-server`` on a free port when one is
installed, else fakeredis' in-process TCP server (Lua included) as a stand-in."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from devicepipe_tools.local.net import free_port, wait_listening


@dataclass
class LocalRedis:
    url: str
    kind: str  # external | redis-server | fakeredis
    stop: Callable[[], None]


def start_redis() -> LocalRedis:
    """Start (or find) the Redis the local stack's functions use."""
    if url := os.environ.get("REDIS_URL"):
        return LocalRedis(url, "external", lambda: None)
    port = free_port()
    if binary := shutil.which("redis-server"):
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(port)
        return LocalRedis(f"redis://127.0.0.1:{port}/0", "redis-server", proc.terminate)
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
    wait_listening(port)
    return LocalRedis(f"redis://127.0.0.1:{port}/0", "fakeredis", server.shutdown)
