"""The local warehouse: DuckDB running the loader's Redshift SQL, adapted where the dialects differ.

Adaptations (everything else is sqlglot's Redshift -> DuckDB translation of the same statements):
- ``COPY ... FROM '<manifest>' ... MANIFEST``: the manifest and its objects are read through the S3 API (the
  local stack's moto) and bulk-loaded with ``read_json``; a line that is not valid JSON fails the load with
  its file, line and reason, as ``sys_load_error_detail`` would report it;
- ``SUPER`` columns become ``JSON``; ``LOCK <table>`` becomes an exclusive file lock held until the
  transaction ends, serialising loaders across threads and processes as Redshift's table lock does (DuckDB's
  optimistic transactions would otherwise fail one of two concurrent loads on a key conflict).

Not reproduced: Redshift's distribution and sort keys (ignored), SUPER's PartiQL navigation, COPY's
``TIMEFORMAT``/``ACCEPTINVCHARS`` corner cases, the Data API's asynchronous statements, IAM roles.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from devicepipe.warehouse import LoadFailed, is_retryable

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "unsupported property DISTKEY" is expected here

_STAGE_COLUMNS = {
    "device_id": "VARCHAR",
    "branch_id": "VARCHAR",
    "ts": "TIMESTAMP",
    "seq": "BIGINT",
    "metrics": "JSON",
    "extra": "JSON",
    "origin_region": "VARCHAR",
    "ingested_at": "TIMESTAMP",
}
_COPY_RE = re.compile(r"^COPY\s+(\w+)\s+FROM\s+'s3://([^/']+)/([^']+)'", re.IGNORECASE)


def to_duckdb(sql: str) -> str:
    """One Redshift statement in DuckDB's dialect."""

    def adapt(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.SUPER:
            return exp.DataType.build("JSON")
        return node

    tree = sqlglot.parse_one(sql, read="redshift")
    return tree.transform(adapt).sql(dialect="duckdb")


class DuckDBWarehouse:
    """The ``Warehouse`` interface on a DuckDB file, reading staged objects through an S3 client."""

    def __init__(self, path: str | Path, s3: Any) -> None:
        self.path = str(path)
        self.s3 = s3
        self.copies = 0
        self._thread_lock = _THREAD_LOCKS.setdefault(self.path, threading.Lock())  # flock is per process

    def connect(self, timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
        """A connection, waiting while another process (the stack's loader, the demo) holds the file."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def execute(self, statements: Sequence[str]) -> None:
        with contextlib.ExitStack() as stack:
            if any(sql.upper().startswith("LOCK ") for sql in statements):
                stack.enter_context(self._table_lock())
            # A connection per transaction: temporary tables end with it, as with a Data API batch's session.
            con = self.connect()
            stack.callback(con.close)
            try:
                con.begin()
                for sql in statements:
                    if sql.upper().startswith("LOCK "):
                        continue
                    if sql.upper().startswith("COPY "):
                        self._copy(con, sql)
                        continue
                    con.execute(to_duckdb(sql))
                con.commit()
            except LoadFailed:
                _rollback(con)
                raise
            except duckdb.Error as exc:
                _rollback(con)
                raise LoadFailed(f"{type(exc).__name__}: {exc}", retryable=is_retryable(str(exc))) from exc

    @contextlib.contextmanager
    def _table_lock(self) -> Iterator[None]:
        with self._thread_lock, open(self.path + ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        con = self.connect()
        try:
            rows: list[tuple[Any, ...]] = con.execute(to_duckdb(sql)).fetchall()
            return rows
        except duckdb.CatalogException:
            return []  # the tables do not exist yet: nothing was loaded
        finally:
            con.close()

    def _copy(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        match = _COPY_RE.match(sql)
        if not match:
            raise LoadFailed(f"cannot read the COPY statement: {sql[:120]}", retryable=False)
        table, bucket, key = match.groups()
        self.copies += 1
        manifest = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        with tempfile.TemporaryDirectory(prefix="devicepipe-copy-") as tmp:
            files = []
            for i, entry in enumerate(manifest["entries"]):
                obj_bucket, obj_key = entry["url"][len("s3://") :].split("/", 1)
                body = self.s3.get_object(Bucket=obj_bucket, Key=obj_key)["Body"].read()
                _check_lines(entry["url"], body)
                path = Path(tmp) / f"{i}.jsonl.gz"
                path.write_bytes(body)
                files.append(str(path))
            columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in _STAGE_COLUMNS.items()) + "}"
            con.execute(
                f"INSERT INTO {table} BY NAME SELECT * FROM read_json(?, format='newline_delimited', "  # noqa: S608
                f"columns={columns})",
                [files],
            )


_THREAD_LOCKS: dict[str, threading.Lock] = {}


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # a failed commit has already ended the transaction
        con.rollback()


def _check_lines(url: str, body: bytes) -> None:
    """Fail like COPY does on a bad object: with the file, line, column and reason."""
    try:
        text = gzip.decompress(body)
    except (OSError, EOFError) as exc:
        raise LoadFailed(
            f"{url}: not gzip",
            retryable=False,
            errors=[{"file": url, "line": 0, "column": None, "reason": f"not gzip: {exc}"}],
        ) from None
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            errors = [{"file": url, "line": number, "column": None, "reason": f"invalid JSON: {exc}"}]
            raise LoadFailed(
                f"Load into table 'stage' failed: {url} line {number}", retryable=False, errors=errors
            ) from None
        missing = [c for c in ("device_id", "ts", "seq") if row.get(c) is None]
        if missing:
            errors = [{"file": url, "line": number, "column": missing[0], "reason": "missing value for a NOT NULL key"}]
            raise LoadFailed(f"Load into table 'stage' failed: {url} line {number}", retryable=False, errors=errors)
