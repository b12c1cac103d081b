"""The local stack's Redis: ``REDIS_URL`` when given, else a real ``redis-server`` on a free port when one is
installed, else fakeredis' in-process TCP server (Lua included) as a stand-in.

With a data directory, redis-server keeps an append-only file there (written before each reply, synced every
second), so that a restart, after `kill -9` too, finds every write it acknowledged: as an ElastiCache failover keeps
the cache, where the stack's Redis would otherwise come back empty."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devicepipe_tools.local.net import free_port, wait_listening
from devicepipe_tools.local.supervisor import ChildSpec, Spawn, launch


@dataclass
class LocalRedis:
    url: str
    kind: str  # external | redis-server | fakeredis
    stop: Callable[[], None]


def start_redis(port: int | None = None, data_dir: Path | None = None, spawn: Spawn = launch) -> LocalRedis:
    """Start (or find) the Redis the local stack's functions use, on ``port`` or a free one, its append-only file
    in ``data_dir`` if given; ``spawn`` starts the process (the stack's supervisor's, to restart it)."""
    if url := os.environ.get("REDIS_URL"):
        return LocalRedis(url, "external", lambda: None)
    port = port or free_port()
    if binary := shutil.which("redis-server"):
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--logfile", "/dev/null"]
        if data_dir:
            data_dir.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            command += ["--appendonly", "no"]
        proc = spawn(ChildSpec("redis-server", command))
        wait_listening(port)
        return LocalRedis(f"redis://127.0.0.1:{port}/0", "redis-server", proc.terminate)
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
    wait_listening(port)
    return LocalRedis(f"redis://127.0.0.1:{port}/0", "fakeredis", server.shutdown)
