"""The local warehouse: DuckDB running the loader's Redshift SQL, adapted where the dialects differ.

Every statement first passes the Redshift rule guard (``devicepipe_tools.redshift_rules``): one Redshift or the
Data API would refuse fails here too, non-retryable, with the rule's name, before any translation.

Adaptations (everything else is sqlglot's Redshift -> DuckDB translation of the same statements):
- ``COPY ... FROM '<manifest>' ... MANIFEST``: the manifest and its objects are read through the S3 API (the
  local stack's moto) and bulk-loaded with ``read_json``; an object that is not gzip, or a line that is not valid
  JSON, fails the load with its file, line and reason, as ``sys_load_error_detail`` would report it. Without
  MANIFEST, every object under the FROM key prefix is loaded, as Redshift does;
- numbers keep their staged digits in SUPER (JSON) columns: DuckDB's JSON reader would parse a number with a
  fraction as a DOUBLE (a 29-digit decimal comes back rounded), where Redshift keeps it as a DECIMAL of up to 38
  digits. So each line is parsed here with exact numbers and a SUPER column's value reaches DuckDB as its JSON
  text, which a JSON column keeps as written. DuckDB's JSON functions (``json_extract``, the navigation below)
  still read such a number as a DOUBLE;
- ``SUPER`` columns become ``JSON``; ``LOCK <table>`` becomes an exclusive file lock held until the
  transaction ends, serialising loaders across threads and processes as Redshift's table lock does (DuckDB's
  optimistic transactions would otherwise fail one of two concurrent loads on a key conflict);
- PartiQL navigation of a SUPER object, ``alias.column.attr[.attr...]`` (three parts or more: the warehouse SQL
  never qualifies a column by schema), becomes ``json_extract(alias.column, '$."attr"...')``: a missing
  attribute is NULL, as in Redshift's default lax mode;
- ``JSON_TYPEOF`` is a macro over DuckDB's ``json_type`` giving Redshift's names (number, string, boolean,
  object, array, null).

Not reproduced: Redshift's distribution and sort keys (ignored), array subscripts and unnesting of SUPER,
COPY's ``TIMEFORMAT``/``ACCEPTINVCHARS`` corner cases, the Data API's asynchronous statements, IAM roles.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import sqlglot
from sqlglot import exp

from devicepipe.streams import exact_number
from devicepipe.warehouse import LoadFailed
from devicepipe_tools.redshift_rules import RuleViolation, copy_parts, guard

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "unsupported property DISTKEY" is expected here

#: Columns COPY into ``stage`` cannot leave empty: they become the NOT NULL key of ``readings``.
_STAGE_KEY = ("device_id", "ts", "seq")
#: DuckDB failures a retried transaction can get past: a write-write conflict between transactions (the
#: counterpart of Redshift's serializable isolation error 1023), or the file held by another process.
_RETRYABLE = (duckdb.TransactionException, duckdb.IOException)


#: Redshift's JSON_TYPEOF names for DuckDB's json_type
#: (https://docs.aws.amazon.com/redshift/latest/dg/r_json_typeof.html, https://duckdb.org/docs/stable/data/json/json_functions).
_JSON_TYPEOF = """CREATE OR REPLACE TEMP MACRO json_typeof(v) AS CASE json_type(v)
    WHEN 'BIGINT' THEN 'number' WHEN 'UBIGINT' THEN 'number' WHEN 'HUGEINT' THEN 'number' WHEN 'DOUBLE' THEN 'number'
    WHEN 'VARCHAR' THEN 'string' WHEN 'BOOLEAN' THEN 'boolean' WHEN 'OBJECT' THEN 'object' WHEN 'ARRAY' THEN 'array'
    WHEN 'NULL' THEN 'null' END"""


def to_duckdb(sql: str) -> str:
    """One Redshift statement in DuckDB's dialect."""

    def adapt(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.SUPER:
            return exp.DataType.build("JSON")
        if isinstance(node, exp.Dot | exp.Column) and len(node.parts) >= 3:
            return _navigation(node)
        return node

    tree = sqlglot.parse_one(sql, read="redshift")
    return tree.transform(adapt).sql(dialect="duckdb")


def _navigation(node: exp.Dot | exp.Column) -> exp.Expression:
    """``alias.column.attr[.attr...]`` (sqlglot reads three parts as db.table.column, more as a Dot) as
    ``json_extract``; attributes are quoted in the path, so any name navigates as it does in Redshift
    (https://docs.aws.amazon.com/redshift/latest/dg/query-super.html)."""
    alias, super_column, *path = [part.name for part in node.parts]
    json_path = "$" + "".join(f'."{name}"' for name in path)
    return exp.JSONExtract(this=exp.column(super_column, table=alias), expression=exp.Literal.string(json_path))


class DuckDBWarehouse:
    """The ``Warehouse`` interface on a DuckDB file, reading staged objects through an S3 client."""

    def __init__(self, path: str | Path, s3: Any, read_only: bool = False) -> None:
        self.path = str(path)
        self.s3 = s3
        self.read_only = read_only  # a reader of the loader's snapshot (``warehouse_snapshot``)
        self.copies = 0
        self._thread_lock = _THREAD_LOCKS.setdefault(self.path, threading.Lock())  # flock is per process

    def connect(self, timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
        """A connection, waiting while another process (the stack's loader, the demo) holds the file."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                con = duckdb.connect(self.path, read_only=self.read_only)
                con.execute(_JSON_TYPEOF)  # per connection, as the translated SQL may call it
                return con
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def execute(self, statements: Sequence[str]) -> None:
        _check_rules(statements)
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
                raise LoadFailed(f"{type(exc).__name__}: {exc}", retryable=isinstance(exc, _RETRYABLE)) from exc

    @contextlib.contextmanager
    def _table_lock(self) -> Iterator[None]:
        with self._thread_lock, open(self.path + ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        _check_rules([sql])
        con = self.connect()
        try:
            rows: list[tuple[Any, ...]] = con.execute(to_duckdb(sql)).fetchall()
            return rows
        except duckdb.CatalogException:
            return []  # the tables do not exist yet: nothing was loaded
        finally:
            con.close()

    def _copy(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        parts = copy_parts(sql)
        bucket, key = parts.source.removeprefix("s3://").split("/", 1)
        self.copies += 1
        if "MANIFEST" in parts.options:
            manifest = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            urls = [entry["url"] for entry in manifest["entries"]]
        else:  # FROM is a key prefix: every object under it
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            urls = [f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", [])]
        table = parts.table
        types = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?", [table]
        ).fetchall()
        supers = {c for c, t in types if t == "JSON"}
        with tempfile.TemporaryDirectory(prefix="devicepipe-copy-") as tmp:
            files = []
            for i, url in enumerate(urls):
                obj_bucket, obj_key = url[len("s3://") :].split("/", 1)
                body = self.s3.get_object(Bucket=obj_bucket, Key=obj_key)["Body"].read()
                rows = _rows(url, body, table, _STAGE_KEY if table == "stage" else ())
                path = Path(tmp) / f"{i}.jsonl"
                path.write_bytes(b"".join(_stage_line(row, supers) + b"\n" for row in rows))
                files.append(str(path))
            if not files:
                return
            # SUPER columns arrive as their JSON text (VARCHAR), cast to JSON as written: exact digits.
            columns = "{" + ", ".join(f"'{c}': '{'VARCHAR' if c in supers else t}'" for c, t in types) + "}"
            con.execute(
                f"INSERT INTO {table} BY NAME SELECT * FROM read_json(?, format='newline_delimited', "  # noqa: S608
                f"columns={columns})",
                [files],
            )


_THREAD_LOCKS: dict[str, threading.Lock] = {}


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # a failed commit has already ended the transaction
        con.rollback()


def _check_rules(statements: Sequence[str]) -> None:
    """Refuse, as Redshift or the Data API would, what breaks a Redshift rule (non-retryable: it fails again)."""
    try:
        guard(statements)
    except RuleViolation as exc:
        raise LoadFailed(f"refused by the Redshift rule {exc.rule}: {exc}", retryable=False) from exc


def _rows(url: str, body: bytes, table: str, required: Sequence[str]) -> list[dict[str, Any]]:
    """The object's rows, each number exact (a ``Decimal``, written back by ``streams.exact_number``); fail like
    COPY does on a bad object: with the file, line, column and reason."""
    try:
        text = gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:  # a corrupt deflate stream raises zlib.error, not OSError
        raise _rejected(url, table, 0, None, f"not gzip: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line, parse_float=Decimal, parse_int=Decimal)
        except ValueError as exc:
            raise _rejected(url, table, number, None, f"invalid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise _rejected(url, table, number, None, "not a JSON object")
        missing = [c for c in required if row.get(c) is None]
        if missing:
            raise _rejected(url, table, number, missing[0], "missing value for a NOT NULL key")
        rows.append(row)
    return rows


def _rejected(url: str, table: str, line: int, column: str | None, reason: str) -> LoadFailed:
    """A COPY failure as Redshift reports one: permanent, with the row of ``sys_load_error_detail``."""
    message = f"Load into table '{table}' failed: {url}" + (f" line {line}" if line else f": {reason}")
    return LoadFailed(
        message, retryable=False, errors=[{"file": url, "line": line, "column": column, "reason": reason}]
    )


def _json(value: Any) -> bytes:
    """JSON with every number as it was read, digit for digit, whatever its size (the stager's writer)."""
    return orjson.dumps(value, default=exact_number)


def _stage_line(row: dict[str, Any], supers: set[str]) -> bytes:
    """One row for ``read_json``: SUPER columns as their JSON text (a JSON null stays a SQL NULL, as in COPY)."""
    return _json({k: _json(v).decode() if k in supers and v is not None else v for k, v in row.items()})
