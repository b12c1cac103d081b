"""The warehouse side of the loader: Redshift SQL (written once) and the Redshift Data API adapter.

One load is one transaction (Data API ``BatchExecuteStatement`` runs its statements as one):

1. ``LOCK load_ledger`` serialises concurrent loaders;
2. COPY the manifest's objects into a temporary staging table (JSON 'auto', GZIP, IAM role);
3. keep one row per ``(device_id, ts, seq)`` (the newest ``ingested_at``) and MERGE it into ``readings``;
4. record the manifest in ``load_ledger`` and its objects in ``loaded_objects``: the object keys are COPYed
   from a small gzip JSON-lines ledger file written beside the manifest, so every statement keeps the same
   small size whatever the manifest's object count (the Data API refuses a statement over 100 KB).

A repeated or retried load of the same manifest therefore changes no row (MERGE on the key), and either all of
it happens or none (a cancelled or failed statement rolls the transaction back).

What a cycle reads stays bounded by time, not by history: ``loaded_keys_query`` reads the ledger only inside the key
ranges the cycle listed (``loaded_objects`` is sorted on its key, so Redshift's zone maps skip the rest), and
``load_watermark`` keeps, per origin prefix, the oldest hour partition a cycle still has to list.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from devicepipe.retry import Backoff, Deadline, error_code, is_transient

DDL = [
    """CREATE TABLE IF NOT EXISTS readings (
    device_id VARCHAR(128) NOT NULL,
    branch_id VARCHAR(128) NOT NULL,
    ts TIMESTAMP NOT NULL,
    seq BIGINT NOT NULL,
    metrics SUPER,
    extra SUPER,
    origin_region VARCHAR(32),
    ingested_at TIMESTAMP,
    loaded_at TIMESTAMP DEFAULT GETDATE(),
    PRIMARY KEY (device_id, ts, seq)
) DISTKEY (device_id) COMPOUND SORTKEY (device_id, ts)""",
    """CREATE TABLE IF NOT EXISTS load_ledger (
    manifest_key VARCHAR(1024) NOT NULL,
    loaded_at TIMESTAMP NOT NULL,
    object_count INTEGER NOT NULL,
    PRIMARY KEY (manifest_key)
)""",
    # Sorted on the key: a cycle reads only the key ranges it listed, and with "a range-restricted predicate, the
    # query processor can use the min and max values [of each block] to rapidly skip over large numbers of blocks"
    # (https://docs.aws.amazon.com/redshift/latest/dg/t_Sorting_data.html).
    """CREATE TABLE IF NOT EXISTS loaded_objects (
    object_key VARCHAR(1024) NOT NULL,
    manifest_key VARCHAR(1024) NOT NULL,
    PRIMARY KEY (object_key)
) SORTKEY (object_key)""",
    # Per origin prefix (s3://bucket/readings/origin=<region>/): the oldest hour partition that may still hold an
    # object to load (``dt=YYYY-MM-DD/hour=HH``); a cycle lists from there. A hint only: lower lists more.
    """CREATE TABLE IF NOT EXISTS load_watermark (
    staging_prefix VARCHAR(1024) NOT NULL,
    partition_from VARCHAR(32) NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (staging_prefix)
)""",
]
# Rows keep the staged JSON's names (COPY FORMAT JSON 'auto' maps keys to columns by name).
STAGE_DDL = """CREATE TEMP TABLE stage (
    device_id VARCHAR(128),
    branch_id VARCHAR(128),
    ts TIMESTAMP,
    seq BIGINT,
    metrics SUPER,
    extra SUPER,
    origin_region VARCHAR(32),
    ingested_at TIMESTAMP
)"""
# No REGION option: the manifest and every object it names are in the warehouse's own region (the other region's
# staged objects are replicated into this region's bucket, docs/warehouse-regions.md). With REGION, "all
# resources, including a manifest file ... must be located in the specified region":
# https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html
COPY = "COPY stage FROM '{manifest_url}' IAM_ROLE '{role_arn}' FORMAT JSON 'auto' GZIP MANIFEST TIMEFORMAT 'auto'"
# "If you're using the QUALIFY clause directly after the FROM clause, the FROM relation name must have an alias
# specified before the QUALIFY clause": https://docs.aws.amazon.com/redshift/latest/dg/r_QUALIFY_clause.html
# The result has one row per MERGE key, as MERGE requires ("Found multiple matches to update the same tuple"):
# https://docs.aws.amazon.com/redshift/latest/dg/r_MERGE.html
DEDUP = """CREATE TEMP TABLE stage_dedup AS
SELECT * FROM stage AS st
QUALIFY ROW_NUMBER() OVER (PARTITION BY st.device_id, st.ts, st.seq ORDER BY st.ingested_at DESC) = 1"""
MERGE = """MERGE INTO readings USING stage_dedup AS s
ON readings.device_id = s.device_id AND readings.ts = s.ts AND readings.seq = s.seq
WHEN MATCHED THEN UPDATE SET branch_id = s.branch_id, metrics = s.metrics, extra = s.extra,
    origin_region = s.origin_region, ingested_at = s.ingested_at
WHEN NOT MATCHED THEN INSERT (device_id, branch_id, ts, seq, metrics, extra, origin_region, ingested_at)
    VALUES (s.device_id, s.branch_id, s.ts, s.seq, s.metrics, s.extra, s.origin_region, s.ingested_at)"""
# Delete-then-insert under the lock: a concurrent or repeated load of the same manifest leaves one ledger row
# (Redshift does not enforce primary keys).
LEDGER = [
    "DELETE FROM load_ledger WHERE manifest_key = '{manifest_key}'",
    "INSERT INTO load_ledger (manifest_key, loaded_at, object_count) VALUES ('{manifest_key}', GETDATE(), {count})",
]
# The manifest's object keys, one JSON object per line ({"object_key": "s3://..."}), gzip, COPYed from the ledger
# file written beside the manifest: the statements stay a few hundred bytes for any manifest size, far inside the
# Data API's 100 KB per statement (https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html). Listing the
# keys in the SQL made the statements grow by ~200 bytes an object (99-118 KB at 500 objects).
# Without MANIFEST, COPY's FROM is a key prefix: the ledger key ends the file name, so it names one object
# (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html).
STAGE_OBJECTS_DDL = "CREATE TEMP TABLE stage_objects (object_key VARCHAR(1024))"
COPY_OBJECTS = "COPY stage_objects FROM '{ledger_url}' IAM_ROLE '{role_arn}' FORMAT JSON 'auto' GZIP"
LOADED_OBJECTS = [
    "DELETE FROM loaded_objects USING stage_objects WHERE loaded_objects.object_key = stage_objects.object_key",
    "INSERT INTO loaded_objects (object_key, manifest_key)"
    " SELECT so.object_key, '{manifest_key}' FROM stage_objects AS so",
]
LOADED_KEYS = "SELECT object_key FROM loaded_objects"
WATERMARKS = "SELECT staging_prefix, partition_from FROM load_watermark"
# Delete-then-insert under the lock, as for the ledger (Redshift does not enforce primary keys).
SET_WATERMARK = [
    "DELETE FROM load_watermark WHERE staging_prefix = '{prefix}'",
    "INSERT INTO load_watermark (staging_prefix, partition_from, updated_at)"
    " VALUES ('{prefix}', '{partition}', GETDATE())",
]
LOAD_ERRORS = """SELECT file_name, line_number, column_name, error_message
FROM sys_load_error_detail WHERE query_id = {query_id} ORDER BY line_number LIMIT 20"""
BRANCH_REPORT = """SELECT branch_id, COUNT(*) AS readings, COUNT(DISTINCT device_id) AS devices, MAX(ts) AS last_seen
FROM readings GROUP BY branch_id ORDER BY branch_id"""


def quote(text: str) -> str:
    """A SQL string literal's content (keys are ours, but quote anyway)."""
    return text.replace("'", "''")


def load_statements(
    manifest_url: str, manifest_key: str, ledger_url: str, object_count: int, role_arn: str
) -> list[str]:
    """The statements of one load, in order (run as one transaction).

    The manifest, its objects and the ledger file (``ledger_document``) must be in one bucket of the warehouse's
    region (the loader guarantees it): no COPY names a REGION. No statement grows with the manifest.
    """
    key = quote(manifest_key)
    return [
        "LOCK load_ledger",
        STAGE_DDL,
        COPY.format(manifest_url=quote(manifest_url), role_arn=quote(role_arn)),
        DEDUP,
        MERGE,
        *(s.format(manifest_key=key, count=object_count) for s in LEDGER),
        STAGE_OBJECTS_DDL,
        COPY_OBJECTS.format(ledger_url=quote(ledger_url), role_arn=quote(role_arn)),
        *(s.format(manifest_key=key) for s in LOADED_OBJECTS),
    ]


def key_range(column: str, prefix: str, start_after: str = "") -> str:
    """A predicate for ``column`` values under ``prefix`` (and after ``start_after``, if given): a range, not a
    LIKE, so that a sort key's zone maps apply and no key character is read as a wildcard."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # every string that starts with prefix sorts below it
    low = f"{column} > '{quote(start_after)}'" if start_after else f"{column} >= '{quote(prefix)}'"
    return f"({low} AND {column} < '{quote(end)}')"


def loaded_keys_query(ranges: Sequence[tuple[str, str]]) -> str:
    """The ledger's keys inside the listed ``(prefix, start_after)`` ranges (full ``s3://`` URLs): what a cycle
    reads of the ledger, bounded by what it listed, not by everything ever loaded."""
    return f"{LOADED_KEYS} WHERE " + " OR ".join(key_range("object_key", p, s) for p, s in ranges)


def watermarks_query(prefix: str) -> str:
    """The watermarks of the origin prefixes under ``prefix`` (an ``s3://bucket/readings/`` URL)."""
    return f"{WATERMARKS} WHERE {key_range('staging_prefix', prefix)}"


def watermark_statements(marks: dict[str, str]) -> list[str]:
    """One transaction setting each origin prefix's watermark, serialised with loads by the ledger lock."""
    statements = ["LOCK load_ledger"]
    for prefix, partition in sorted(marks.items()):
        statements += [s.format(prefix=quote(prefix), partition=quote(partition)) for s in SET_WATERMARK]
    return statements


def ledger_document(objects: Sequence[str]) -> bytes:
    """The ledger file COPYed into ``stage_objects``: gzip JSON lines, one ``{"object_key": url}`` per object."""
    lines = "".join(json.dumps({"object_key": url}) + "\n" for url in objects)
    return gzip.compress(lines.encode(), mtime=0)


class LoadFailed(RuntimeError):
    """A load that did not commit. ``retryable`` says whether the same load may succeed later."""

    def __init__(self, message: str, retryable: bool, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.errors = errors or []


class Warehouse(Protocol):
    """What the loader needs of a warehouse (Redshift through the Data API, or DuckDB locally)."""

    def execute(self, statements: Sequence[str]) -> None:
        """Run the statements as one transaction; raise ``LoadFailed`` if it does not commit."""

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one query."""


#: Data API errors a later attempt can get past, by the error code each operation documents
#: (https://docs.aws.amazon.com/redshift-data/latest/APIReference/API_BatchExecuteStatement.html#API_BatchExecuteStatement_Errors,
#: https://docs.aws.amazon.com/redshift-data/latest/APIReference/CommonErrors.html): too many active statements or
#: sessions, throttling, an internal or "environmental" error, a failed database connection. ``ValidationException``
#: (e.g. a statement over 100 KB) and ``ResourceNotFoundException`` are not: the same call fails again.
RETRYABLE_API_ERRORS = frozenset(
    {
        "ActiveStatementsExceededException",
        "ActiveSessionsExceededException",
        "BatchExecuteStatementException",
        "ExecuteStatementException",
        "DatabaseConnectionException",
        "InternalServerException",
        "ThrottlingException",
    }
)
#: Redshift error numbers, as a failed statement's ``Error`` text carries them ("ERROR: 1023 DETAIL: ..."), that
#: a retried transaction can get past. 1023: serializable isolation violation, "Retry the canceled transaction"
#: (https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation.html). DescribeStatement exposes no SQLSTATE
#: nor error code field: ``Error`` is only "the error message from the cluster"
#: (https://docs.aws.amazon.com/redshift-data/latest/APIReference/API_DescribeStatement.html), so the number is
#: read from that text, never words.
RETRYABLE_REDSHIFT_ERRORS = frozenset({1023})
_ERROR_NUMBER = re.compile(r"\bERROR:\s*(\d{3,5})\b", re.IGNORECASE)


def redshift_error_number(message: str) -> int | None:
    """The Redshift error number in a statement's error text ("ERROR: 1023 DETAIL: ..."), if it has one."""
    match = _ERROR_NUMBER.search(message)
    return int(match.group(1)) if match else None


def api_error_retryable(exc: BaseException) -> bool:
    """Whether a Data API call's exception (botocore) may succeed later: by its documented error code, or a
    transient transport or 5xx error."""
    return error_code(exc) in RETRYABLE_API_ERRORS or is_transient(exc)


def statement_retryable(desc: dict[str, Any]) -> bool:
    """Whether a statement that ended FAILED or ABORTED may succeed if its transaction runs again.

    ABORTED: stopped by a user (CancelStatement), not by its SQL, so retryable. FAILED: only by the Redshift error
    numbers above; anything else (a SQL error, bad data) fails the same way again.
    """
    if desc.get("Status") == "ABORTED":
        return True
    return redshift_error_number(str(desc.get("Error", ""))) in RETRYABLE_REDSHIFT_ERRORS


@dataclass
class RedshiftDataApi:
    """Redshift Serverless through the Data API: IAM auth (no passwords), statements polled to completion.

    Parameters
    ----------
    client
        boto3 ``redshift-data`` client.
    workgroup, database
        Where to run.
    deadline
        Time left in the invocation; a statement still running near it is cancelled (its transaction rolls
        back, so nothing is half-done) and reported as retryable.
    """

    client: Any
    workgroup: str
    database: str
    deadline: Deadline = field(default_factory=Deadline.unlimited)
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.1, cap_s=2.0))
    max_wait_s: float = 900.0  # outside Lambda (the operator CLI) no statement is waited on for longer
    sleep: Callable[[float], None] = time.sleep

    def execute(self, statements: Sequence[str]) -> None:
        try:
            statement_id = self.client.batch_execute_statement(
                WorkgroupName=self.workgroup, Database=self.database, Sqls=list(statements)
            )["Id"]
        except Exception as exc:
            code = error_code(exc) or type(exc).__name__
            raise LoadFailed(f"{code}: {exc}", retryable=api_error_retryable(exc)) from exc
        self._wait(statement_id)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            statement_id = self.client.execute_statement(WorkgroupName=self.workgroup, Database=self.database, Sql=sql)[
                "Id"
            ]
        except Exception as exc:
            code = error_code(exc) or type(exc).__name__
            raise LoadFailed(f"{code}: {exc}", retryable=api_error_retryable(exc)) from exc
        self._wait(statement_id)
        rows: list[tuple[Any, ...]] = []
        kwargs: dict[str, Any] = {"Id": statement_id}
        while True:
            page = self.client.get_statement_result(**kwargs)
            rows += [tuple(next(iter(cell.values())) if cell else None for cell in r) for r in page["Records"]]
            if not page.get("NextToken"):
                return rows
            kwargs["NextToken"] = page["NextToken"]

    def _wait(self, statement_id: str) -> dict[str, Any]:
        retry = 0
        give_up = time.monotonic() + self.max_wait_s
        while True:
            desc: dict[str, Any] = self.client.describe_statement(Id=statement_id)
            status = desc["Status"]
            if status == "FINISHED":
                return desc
            if status in ("FAILED", "ABORTED"):
                message = desc.get("Error", status)
                errors = self._load_errors(desc)
                raise LoadFailed(message, retryable=statement_retryable(desc) and not errors, errors=errors)
            wait = self.backoff.delay(min(retry, 5), rng=lambda: 1.0)
            if not self.deadline.allows(wait + 1.0) or time.monotonic() + wait > give_up:
                # Cancelling rolls the whole transaction back: nothing is left half-done.
                self.client.cancel_statement(Id=statement_id)
                raise LoadFailed("cancelled by the loader before the function timeout", retryable=True)
            self.sleep(wait)
            retry += 1

    def _load_errors(self, desc: dict[str, Any]) -> list[dict[str, Any]]:
        """File, line, column and reason of COPY errors, from sys_load_error_detail."""
        query_ids = [s.get("RedshiftQueryId") for s in desc.get("SubStatements", []) if s.get("Status") == "FAILED"]
        if not query_ids or not query_ids[0]:
            return []
        try:
            rows = self.query(LOAD_ERRORS.format(query_id=int(query_ids[0])))
        except LoadFailed:
            return []
        return [{"file": r[0], "line": r[1], "column": r[2], "reason": r[3]} for r in rows]
