"""One small interface to PostgreSQL, two adapters: a direct connection (pg8000) and the RDS Data API.

Both take the same SQL with ``:name`` parameters, so the registry's SQL is written once:

- ``PgDatabase`` (pg8000.native, pure Python: a small layer, no compiled driver for arm64): every region's
  functions reading their own cluster's reader endpoint, the local stack and tests.
- ``DataApiDatabase`` (boto3 ``rds-data``): admin writes to the primary cluster (migrations, imports) without a
  network path to the VPC. It cannot serve reads in the secondary region: "Data API requires access to the writer
  instance for query processing, even for read queries" and a global database's secondary has no writer
  (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/data-api.limitations.html).

Values cross the interface as ``str``, ``int``, ``float``, ``bool``, ``date`` or ``None`` (parameters) and come
back as the driver decodes them; SQL that must read the same on both casts to text or JSON text itself (the Data
API's JSON records carry no dates or arrays of their own). Write casts as ``CAST(x AS t)``, never ``x::t``.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import date
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import pg8000.native
from botocore.exceptions import BotoCoreError, ClientError

Param = str | int | float | bool | date | None
Row = dict[str, Any]


class DatabaseError(RuntimeError):
    """A statement failed (or the database could not be reached).

    ``sqlstate`` is PostgreSQL's error code (``23505`` unique violation, ``23503`` foreign key, ``23514`` check,
    ``42501`` permission denied; empty when unknown), ``constraint`` the violated constraint's name, if any.
    """

    def __init__(self, message: str, sqlstate: str = "", constraint: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint = constraint


class ConnectFailed(DatabaseError):
    """No connection: the server is down, unreachable, or refused the login."""


class Database(Protocol):
    """What the registry needs from PostgreSQL."""

    def query(self, sql: str, **params: Param) -> list[Row]:
        """Rows of a statement that returns rows, as dicts keyed by column name."""
        ...

    def execute(self, sql: str, **params: Param) -> None:
        """Run one statement (no result)."""
        ...

    def transaction(self) -> Any:
        """A context manager: the statements inside commit together, or roll back on an exception."""
        ...

    def close(self) -> None:
        """Let the connection go (the next statement opens another)."""
        ...


_CONSTRAINT = re.compile(r'constraint "([^"]+)"')


def _constraint(message: str) -> str:
    """The constraint named in PostgreSQL's message (``... violates check constraint "x"``)."""
    match = _CONSTRAINT.search(message)
    return match.group(1) if match else ""


# ----------------------------------------------------------------------------------------------- pg8000
class PgDatabase:
    """A direct connection, opened on first use (no network at import) and reopened after it broke.

    ``connect`` makes a new ``pg8000.native.Connection`` (a fresh IAM token each time, see ``registry.connect``).
    A broken connection fails the statement that found it and is replaced on the next one: a statement is never
    sent twice, so no write can run twice.
    """

    def __init__(self, connect: Callable[[], pg8000.native.Connection]) -> None:
        self._connect = connect
        self._conn: pg8000.native.Connection | None = None
        self._in_transaction = False

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 10) -> PgDatabase:
        """From ``postgresql://user[:password]@host[:port]/database`` (no TLS: the local stack and tests)."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError(f"not a postgresql://user@host:port/database URL: {url!r}")
        options: dict[str, Any] = {
            "user": unquote(parts.username or "postgres"),
            "password": unquote(parts.password) if parts.password else None,
            "host": parts.hostname,
            "port": parts.port or 5432,
            "database": unquote(parts.path.lstrip("/")) or "postgres",
            "timeout": timeout_s,
        }
        return cls(lambda: pg8000.native.Connection(**options))

    def _connection(self) -> pg8000.native.Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except pg8000.native.DatabaseError as exc:  # refused by the server: bad login, no such database
                raise _pg_error(exc, ConnectFailed) from None
            except (pg8000.native.InterfaceError, OSError) as exc:
                raise ConnectFailed(f"cannot connect to PostgreSQL: {exc}") from None
        return self._conn

    def _run(self, sql: str, params: dict[str, Param]) -> tuple[list[list[Any]], list[str]]:
        conn = self._connection()
        try:
            rows = conn.run(sql, **params)
        except pg8000.native.DatabaseError as exc:
            raise _pg_error(exc) from None
        except (pg8000.native.InterfaceError, OSError) as exc:
            self.close()
            raise ConnectFailed(f"lost the PostgreSQL connection: {exc}") from None
        return rows or [], [c["name"] for c in conn.columns or []]

    def query(self, sql: str, **params: Param) -> list[Row]:
        rows, names = self._run(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def execute(self, sql: str, **params: Param) -> None:
        self._run(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_transaction:
            raise RuntimeError("transactions do not nest")
        self._run("START TRANSACTION", {})
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            if self._conn is not None:  # a lost connection has rolled back already
                with suppress(DatabaseError):  # the body's error is the one to tell
                    self._run("ROLLBACK", {})
            raise
        self._in_transaction = False
        self._run("COMMIT", {})

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(pg8000.native.InterfaceError, OSError):  # already gone
                conn.close()


def _pg_error(exc: pg8000.native.DatabaseError, kind: type[DatabaseError] = DatabaseError) -> DatabaseError:
    """pg8000's error fields (PostgreSQL's ErrorResponse: C code, M message, D detail, n constraint)."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    message = str(fields.get("M", exc))
    if detail := fields.get("D"):
        message = f"{message} ({detail})"
    return kind(message, str(fields.get("C", "")), str(fields.get("n", "")) or _constraint(message))


def tls_context(ca_bundle: str) -> ssl.SSLContext:
    """Verified TLS (certificate chain and host name) against ``ca_bundle``; IAM authentication needs TLS."""
    return ssl.create_default_context(cafile=ca_bundle)


# ----------------------------------------------------------------------------------------------- Data API
# Data API errors carry PostgreSQL's SQLSTATE at the end of the message ("...; SQLState: 23505").
_SQLSTATE = re.compile(r"SQLState: ([0-9A-Z]{5})")


class DataApiDatabase:
    """The RDS Data API on one cluster (its writer), authenticated by a Secrets Manager secret.

    Statements inside ``transaction()`` carry its ``transactionId``; the others commit on their own
    (https://docs.aws.amazon.com/rdsdataservice/latest/APIReference/API_ExecuteStatement.html). Rows come back as
    ``formatRecordsAs=JSON`` (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/data-api-json.html).
    """

    def __init__(self, client: Any, cluster_arn: str, secret_arn: str, database: str) -> None:
        self._client = client
        self._target = {"resourceArn": cluster_arn, "secretArn": secret_arn}
        self._database = database
        self._transaction_id: str | None = None

    def _call(self, operation: str, **request: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = getattr(self._client, operation)(**self._target, **request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            message = str(error.get("Message", exc))
            match = _SQLSTATE.search(message)
            raise DatabaseError(message, match.group(1) if match else "", _constraint(message)) from None
        except BotoCoreError as exc:
            raise ConnectFailed(f"RDS Data API: {exc}") from None
        return response

    def _execute(self, sql: str, params: dict[str, Param]) -> dict[str, Any]:
        request: dict[str, Any] = {"database": self._database, "sql": sql, "formatRecordsAs": "JSON"}
        if params:
            request["parameters"] = [sql_parameter(name, value) for name, value in params.items()]
        if self._transaction_id:
            request["transactionId"] = self._transaction_id
        return self._call("execute_statement", **request)

    def query(self, sql: str, **params: Param) -> list[Row]:
        rows: list[Row] = json.loads(self._execute(sql, params).get("formattedRecords") or "[]")
        return rows

    def execute(self, sql: str, **params: Param) -> None:
        self._execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._transaction_id:
            raise RuntimeError("transactions do not nest")
        self._transaction_id = self._call("begin_transaction", database=self._database)["transactionId"]
        try:
            yield
        except BaseException:
            transaction_id, self._transaction_id = self._transaction_id, None
            self._call("rollback_transaction", transactionId=transaction_id)
            raise
        transaction_id, self._transaction_id = self._transaction_id, None
        self._call("commit_transaction", transactionId=transaction_id)

    def close(self) -> None:
        """Nothing to let go: every call is its own HTTPS request."""


def sql_parameter(name: str, value: Param) -> dict[str, Any]:
    """One typed ``SqlParameter`` (https://docs.aws.amazon.com/rdsdataservice/latest/APIReference/API_SqlParameter.html):
    a date travels as ``YYYY-MM-DD`` text with the DATE type hint."""
    field: dict[str, Any]
    hint: dict[str, str] = {}
    if value is None:
        field = {"isNull": True}
    elif isinstance(value, bool):  # before int: bool is an int
        field = {"booleanValue": value}
    elif isinstance(value, int):
        field = {"longValue": value}
    elif isinstance(value, float):
        field = {"doubleValue": value}
    elif isinstance(value, date):
        field, hint = {"stringValue": value.isoformat()}, {"typeHint": "DATE"}
    else:
        field = {"stringValue": value}
    return {"name": name, "value": field, **hint}
