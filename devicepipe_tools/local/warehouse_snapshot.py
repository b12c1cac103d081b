"""The local warehouse for one writer and many readers: a read-only snapshot, published after each change.

DuckDB lets a process open a database file for writing only while no other process has it open, even read-only:
a notebook holding a connection to the loader's file stopped every load (and a load made readers fail). So
readers never open that file (``files.WAREHOUSE``). After each cycle that changed it, the loader worker (the one
writer: the report run lives in its process) copies it into a new file and renames that over
``files.WAREHOUSE_SNAPSHOT``. A reader opening that name gets the newest complete copy; a reader holding a
connection keeps reading the copy it opened (the rename replaces the name, not the file it has open) and sees
newer rows once it closes and connects again. Nobody waits for anybody.

Why a snapshot rather than the loader serving queries: readers keep DuckDB's own clients (the CLI, notebooks,
pandas) instead of ours, and no query, however long, can hold up the schedule. The price: readers are up to a
cycle behind (2 s, plus the copy), and each change costs a copy of the database (milliseconds, for local data).

DuckDB writes the copy (``COPY FROM DATABASE``, one consistent read) in an old storage format, so a reader whose
DuckDB is older than the loader's (the ``duckdb`` CLI on PyPI lags the Python package) can open it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse

#: The oldest format DuckDB writes that still holds everything the warehouse uses; DuckDB 1.0 and later read it.
STORAGE_VERSION = "v1.0.0"


@dataclass
class SnapshotPublisher:
    """Publishes ``warehouse`` (the writer's) as a read-only copy at ``path`` whenever it changed."""

    warehouse: DuckDBWarehouse
    path: Path
    published_at: float = 0.0
    publishes: int = 0
    seconds: float = 0.0  # the last copy's
    _copied: tuple[int, ...] = ()  # the writer's file as last copied

    def publish(self) -> bool:
        """Copy the warehouse unless the snapshot already holds it as it is; whether it copied."""
        live = Path(self.warehouse.path)
        if file_version(live) == self._copied and self.path.exists():
            return False  # without opening the file: most cycles change nothing
        started = time.monotonic()
        con = self.warehouse.connect()  # while it is open no other process can write the file
        try:
            version = file_version(live)  # as copied
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.unlink(missing_ok=True)
            (catalog,) = con.execute("SELECT current_database()").fetchone() or ("",)
            con.execute(f"ATTACH {_literal(tmp)} AS snapshot_copy (STORAGE_VERSION '{STORAGE_VERSION}')")
            try:
                con.execute(f'COPY FROM DATABASE "{catalog}" TO snapshot_copy')
            finally:
                con.execute("DETACH snapshot_copy")  # checkpoints it: the file alone is the whole copy
        finally:
            con.close()
        tmp.replace(self.path)  # atomic: a reader opening the name gets the old copy or the new one
        self._copied, self.published_at, self.publishes = version, time.time(), self.publishes + 1
        self.seconds = round(time.monotonic() - started, 3)
        return True

    def figures(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "published_at": self.published_at,
            "publishes": self.publishes,
            "seconds": self.seconds,
        }


def file_version(path: Path) -> tuple[int, ...]:
    """Changes whenever DuckDB commits to ``path`` (its file or write-ahead log); reads leave it as it is."""
    out: tuple[int, ...] = ()
    for part in (path, path.with_name(path.name + ".wal")):
        try:
            st = os.stat(part)
        except FileNotFoundError:
            out += (0, 0, 0)
        else:
            out += (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def reader(path: Path, s3: Any = None) -> DuckDBWarehouse:
    """The warehouse as readers see it: the snapshot, read-only (``query`` only)."""
    return DuckDBWarehouse(path, s3, read_only=True)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"
