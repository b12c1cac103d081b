"""The registry of branches, devices and metric definitions (Aurora PostgreSQL; PostgreSQL locally).

Reports join the warehouse's readings with it. Identifiers follow the reading contract; metric names are SQL
identifiers (``[a-z][a-z0-9_]{0,62}``) so that report SQL can navigate ``metrics.<name>`` without quoting.

The schema is versioned SQL in ``migrations/`` (shipped in the layer), applied by ``migrate``; ``import_registry``,
``retire_device`` and ``load_registry`` are its only writers and reader, through a ``database.Database`` (a direct
connection or the RDS Data API: the same SQL on both). Time zones are validated here, against Python's zoneinfo
(the IANA database the reports compute local days with), not in SQL.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import boto3
import pg8000.native

from devicepipe.config import RegistrySettings
from devicepipe.database import Database, DatabaseError, PgDatabase, tls_context


@dataclass(frozen=True)
class Branch:
    branch_id: str
    name: str
    home_region: str
    time_zone: str  # an IANA name, e.g. "Europe/London": report periods are days in this zone
    recipients: tuple[str, ...] = ()  # e-mail addresses (informational; SNS subscriptions do the delivery)


@dataclass(frozen=True)
class Device:
    device_id: str
    branch_id: str
    kind: str
    description: str = ""
    installed_on: date | None = None
    retired_on: date | None = None  # a retired device is no longer expected to report after this day


@dataclass(frozen=True)
class MetricDefinition:
    """One metric of one device kind: its unit and the range outside which a reading is out of range."""

    kind: str
    metric: str
    unit: str = ""
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Registry:
    branches: tuple[Branch, ...] = ()
    devices: tuple[Device, ...] = ()
    metrics: tuple[MetricDefinition, ...] = field(default=())


# ----------------------------------------------------------------------------------------------- rules
# The same patterns are CHECK constraints in migrations/0001_registry.sql.
ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the reading contract's device_id / branch_id alphabet
KIND = re.compile(r"[a-z][a-z0-9_-]{0,62}")
METRIC = re.compile(r"[a-z][a-z0-9_]{0,62}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
EMAIL = re.compile(r"[^@\s;,]+@[^@\s;,]+\.[^@\s;,]+")
MAX_NAME = 200

Problem = tuple[str, str]  # (column, reason)


class InvalidRegistry(ValueError):
    """Rows that break the registry's rules; nothing was written."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
        self.problems = list(problems)


class UnknownDevice(LookupError):
    """No such device in the registry."""


@cache
def _time_zones() -> frozenset[str]:
    # The system's zone directory also holds files that name no place ("localtime" is the machine's own zone).
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


def is_time_zone(name: str) -> bool:
    """An IANA time zone name zoneinfo knows (``Europe/London``; not ``localtime`` nor a path)."""
    return name in _time_zones()


def _pattern(column: str, value: str, pattern: re.Pattern[str], what: str) -> Problem | None:
    return None if pattern.fullmatch(value) else (column, f"{value!r} is not {what}")


def branch_problems(b: Branch) -> list[Problem]:
    """What is wrong with one branch, column by column."""
    found = [
        _pattern("branch_id", b.branch_id, ID, "an id (1-128 of A-Z a-z 0-9 . _ : -)"),
        None if 1 <= len(b.name) <= MAX_NAME else ("name", f"must be 1 to {MAX_NAME} characters"),
        _pattern("home_region", b.home_region, REGION, "an AWS region (e.g. eu-west-1)"),
        None if is_time_zone(b.time_zone) else ("time_zone", f"{b.time_zone!r} is not an IANA time zone name"),
        *(("recipients", f"{r!r} is not an e-mail address") for r in b.recipients if not EMAIL.fullmatch(r)),
    ]
    return [p for p in found if p]


def device_problems(d: Device) -> list[Problem]:
    """What is wrong with one device, column by column (its branch's existence aside: the database checks it)."""
    retired_early = d.installed_on and d.retired_on and d.retired_on < d.installed_on
    found = [
        _pattern("device_id", d.device_id, ID, "an id (1-128 of A-Z a-z 0-9 . _ : -)"),
        _pattern("branch_id", d.branch_id, ID, "an id (1-128 of A-Z a-z 0-9 . _ : -)"),
        _pattern("kind", d.kind, KIND, "a kind (lower case letter, then up to 62 of a-z 0-9 _ -)"),
        ("retired_on", f"{d.retired_on} is before installed_on {d.installed_on}") if retired_early else None,
    ]
    return [p for p in found if p]


def metric_problems(m: MetricDefinition) -> list[Problem]:
    """What is wrong with one metric definition, column by column."""
    infinite = [(c, "must be a finite number") for c, v in (("low", m.low), ("high", m.high)) if _infinite(v)]
    inverted = m.low is not None and m.high is not None and m.low > m.high
    found = [
        _pattern("kind", m.kind, KIND, "a kind (lower case letter, then up to 62 of a-z 0-9 _ -)"),
        _pattern("metric", m.metric, METRIC, "a metric name (lower case letter, then up to 62 of a-z 0-9 _)"),
        *infinite,
        ("high", f"{m.high} is below low {m.low}") if inverted else None,
    ]
    return [p for p in found if p]


def _infinite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def problems(registry: Registry) -> list[str]:
    """Every broken rule of a registry to import, as ``<what> <id>: <column>: <reason>``."""
    found = [f"branch {b.branch_id}: {c}: {r}" for b in registry.branches for c, r in branch_problems(b)]
    found += [f"device {d.device_id}: {c}: {r}" for d in registry.devices for c, r in device_problems(d)]
    found += [f"metric {m.kind}.{m.metric}: {c}: {r}" for m in registry.metrics for c, r in metric_problems(m)]
    for what, keys in (
        ("branch", [b.branch_id for b in registry.branches]),
        ("device", [d.device_id for d in registry.devices]),
        ("metric", [f"{m.kind}.{m.metric}" for m in registry.metrics]),
    ):
        found += [f"{what} {key}: listed {n} times" for key, n in Counter(keys).items() if n > 1]
    return found


# The database's own words for the constraints it enforces, said the registry's way.
_REASONS = {
    "devices_branch_id_fkey": "the device's branch is not in the registry (import the branch first)",
    "devices_retired_after_installed": "retired_on is before installed_on",
    "metric_definitions_range": "low is above high",
}
_SQLSTATE_REASONS = {"42501": "this login may not change the registry (devicepipe_reader reads only)"}


def _explained(exc: DatabaseError) -> DatabaseError:
    reason = _REASONS.get(exc.constraint) or _SQLSTATE_REASONS.get(exc.sqlstate)
    if reason is None:
        return exc
    return type(exc)(f"{reason}: {exc}", exc.sqlstate, exc.constraint)


# ----------------------------------------------------------------------------------------------- migrations
class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are (a changed file, a misnamed one)."""


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file, ``NNNN_name.sql``."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


def migrations_in(folder: Any = None) -> list[Migration]:
    """The migration files of ``folder`` (default: the ones shipped beside this module), by version."""
    folder = folder if folder is not None else resources.files("devicepipe") / "migrations"
    found = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"{entry.name}: migration files are named NNNN_name.sql (e.g. 0002_add_sites.sql)")
        found.append(Migration(match.group(1), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {sorted(versions)}")
    return found


# One statement per call: the Data API and pg8000's parameterised protocol each take a single statement. The
# split skips what may hold a ';' of its own: quoted strings and identifiers, dollar-quoted bodies (DO blocks,
# functions) and comments (which are dropped). E'...' strings with backslash escapes are not understood: don't
# write them in a migration.
_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|\$(\w*)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/|;|[^'"$;/-]+|.""",
    re.DOTALL,
)


def split_statements(sql: str) -> list[str]:
    """The statements of an SQL script, in order, without comments."""
    statements: list[str] = []
    current: list[str] = []
    for match in _TOKEN.finditer(sql):
        piece = match.group(0)
        if piece.startswith(("--", "/*")):
            continue
        if piece == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(piece)
    statements.append("".join(current).strip())
    return [s for s in statements if s]


# pg_advisory_xact_lock's key: any fixed number, the same for every runner ("devicepipe registry migrations").
_LOCK = "SELECT pg_advisory_xact_lock(7140214001)"
_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def migrate(db: Database, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply the migrations the database lacks, in version order, each in its own transaction.

    A transaction-scoped advisory lock serialises concurrent runners (two deploys, two regions' custom resources):
    the second waits, then finds the version applied and skips it. Re-running is a no-op. A file whose checksum
    differs from the one recorded when it was applied is refused (``MigrationError``): applied files never change.

    Returns
    -------
    list[str]
        The versions this call applied (empty when the schema was up to date).
    """
    migrations = migrations_in() if migrations is None else migrations
    applied = []
    for migration in migrations:
        with db.transaction():
            db.execute(_LOCK)
            db.execute(_MIGRATIONS_TABLE)
            rows = db.query("SELECT version, checksum FROM schema_migrations")
            recorded = {r["version"]: r["checksum"] for r in rows}
            _check_unchanged(recorded, migrations)
            if migration.version in recorded:
                continue
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (:version, :name, :checksum)",
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
            )
        applied.append(migration.version)
    return applied


def _check_unchanged(recorded: dict[str, str], migrations: Iterable[Migration]) -> None:
    for m in migrations:
        if m.version in recorded and recorded[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.version}_{m.name}.sql changed after it was applied (checksum {recorded[m.version][:12]} "
                f"applied, {m.checksum[:12]} now): restore it and put the change in a new migration"
            )


# ----------------------------------------------------------------------------------------------- reads and writes
# Each table arrives as one JSON parameter and is expanded in SQL: one statement per table whatever its size (one
# Data API call, not one per row), and no array parameter (the Data API takes none).
_UPSERTS = {
    "branches": """INSERT INTO branches (branch_id, name, home_region, time_zone, recipients)
SELECT branch_id, name, home_region, time_zone, recipients
FROM json_to_recordset(CAST(:rows AS json))
    AS r(branch_id text, name text, home_region text, time_zone text, recipients text[])
ON CONFLICT (branch_id) DO UPDATE SET name = EXCLUDED.name, home_region = EXCLUDED.home_region,
    time_zone = EXCLUDED.time_zone, recipients = EXCLUDED.recipients""",
    "metrics": """INSERT INTO metric_definitions (kind, metric, unit, low, high)
SELECT kind, metric, unit, low, high
FROM json_to_recordset(CAST(:rows AS json))
    AS r(kind text, metric text, unit text, low double precision, high double precision)
ON CONFLICT (kind, metric) DO UPDATE SET unit = EXCLUDED.unit, low = EXCLUDED.low, high = EXCLUDED.high""",
    "devices": """INSERT INTO devices (device_id, branch_id, kind, description, installed_on, retired_on)
SELECT device_id, branch_id, kind, description, installed_on, retired_on
FROM json_to_recordset(CAST(:rows AS json))
    AS r(device_id text, branch_id text, kind text, description text, installed_on date, retired_on date)
ON CONFLICT (device_id) DO UPDATE SET branch_id = EXCLUDED.branch_id, kind = EXCLUDED.kind,
    description = EXCLUDED.description, installed_on = EXCLUDED.installed_on, retired_on = EXCLUDED.retired_on""",
}
# Rows per statement: well under the Data API's 4 MiB request (a device row is ~200 bytes of JSON).
_CHUNK = 2000


def import_registry(db: Database, registry: Registry) -> None:
    """Insert or update every branch, metric definition and device of ``registry``, all or nothing.

    Rows not in ``registry`` are left as they are (retire a device with ``retire_device``). Raises
    ``InvalidRegistry`` (nothing sent) when a row breaks a rule, ``DatabaseError`` (rolled back) when the database
    refuses one, e.g. a device of a branch it doesn't know.
    """
    if found := problems(registry):
        raise InvalidRegistry(found)
    tables: dict[str, Sequence[Branch | Device | MetricDefinition]] = {
        "branches": registry.branches,
        "metrics": registry.metrics,
        "devices": registry.devices,
    }
    try:
        with db.transaction():
            for table, rows in tables.items():  # branches before the devices that reference them
                for chunk in _chunks([as_json(r) for r in rows], _CHUNK):
                    db.execute(_UPSERTS[table], rows=json.dumps(chunk))
    except DatabaseError as exc:
        raise _explained(exc) from None


def as_json(row: Branch | Device | MetricDefinition) -> dict[str, Any]:
    """A row as JSON-ready values (dates as YYYY-MM-DD)."""
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in asdict(row).items()}


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def retire_device(db: Database, device_id: str, on: date) -> None:
    """Mark a device retired on ``on`` (its last expected day); ``UnknownDevice`` when there is none."""
    try:
        rows = db.query(
            "UPDATE devices SET retired_on = :on WHERE device_id = :device_id RETURNING device_id",
            on=on,
            device_id=device_id,
        )
    except DatabaseError as exc:
        raise _explained(exc) from None
    if not rows:
        raise UnknownDevice(f"no device {device_id!r} in the registry")


# One statement, so one snapshot (an import committing meanwhile is seen whole or not at all) and one round trip;
# JSON text, so both adapters return the same values (dates as ISO text, arrays as JSON arrays).
_LOAD = """SELECT
    CAST(COALESCE((SELECT json_agg(b ORDER BY b.branch_id) FROM (
        SELECT branch_id, name, home_region, time_zone, recipients FROM branches) AS b), '[]') AS text) AS branches,
    CAST(COALESCE((SELECT json_agg(d ORDER BY d.device_id) FROM (
        SELECT device_id, branch_id, kind, description, installed_on, retired_on FROM devices) AS d), '[]') AS text)
        AS devices,
    CAST(COALESCE((SELECT json_agg(m ORDER BY m.kind, m.metric) FROM (
        SELECT kind, metric, unit, low, high FROM metric_definitions) AS m), '[]') AS text) AS metrics"""


def load_registry(db: Database) -> Registry:
    """The whole registry (it is small: thousands of rows), ordered by id."""
    row = db.query(_LOAD)[0]
    branches, devices, metrics = (json.loads(row[k]) for k in ("branches", "devices", "metrics"))
    return Registry(
        branches=tuple(Branch(**{**b, "recipients": tuple(b["recipients"])}) for b in branches),
        devices=tuple(
            Device(**{**d, "installed_on": _date(d["installed_on"]), "retired_on": _date(d["retired_on"])})
            for d in devices
        ),
        metrics=tuple(MetricDefinition(**{**m, "low": _float(m["low"]), "high": _float(m["high"])}) for m in metrics),
    )


def _date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------------------------- connection
#: The RDS certificate authorities, shipped in the layer (see the file's header for where it comes from).
RDS_CA_BUNDLE = Path(__file__).parent / "certs" / "rds-ca-bundle.pem"


def connect(settings: RegistrySettings) -> PgDatabase:
    """A connection to the registry from ``settings`` (opened on first use).

    ``REGISTRY_URL``: as given, no TLS (the local stack, tests). Otherwise the region's Aurora endpoint with verified
    TLS and, unless the settings carry a password, an IAM authentication token made for each new connection:
    tokens live 15 minutes and are checked at login only
    (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/UsingWithRDS.IAMDBAuth.html). Making one is a
    local SigV4 signature (boto3 ``generate_db_auth_token``), no network call. IAM authentication needs TLS; the
    server is verified against the RDS CAs (``RDS_CA_BUNDLE`` or ``REGISTRY_CA_BUNDLE``), never left unverified.
    """
    if settings.url:
        return PgDatabase.from_url(settings.url, settings.timeout_s)
    context = tls_context(settings.ca_bundle or str(RDS_CA_BUNDLE))
    rds = boto3.client("rds", region_name=settings.region)  # signs locally: no call to RDS

    def open_connection() -> pg8000.native.Connection:
        password = settings.password or rds.generate_db_auth_token(
            DBHostname=settings.host, Port=settings.port, DBUsername=settings.user, Region=settings.region
        )
        return pg8000.native.Connection(
            user=settings.user,
            password=password,
            host=settings.host,
            port=settings.port,
            database=settings.database,
            ssl_context=context,
            timeout=settings.timeout_s,
            application_name="devicepipe",
        )

    return PgDatabase(open_connection)


def read_registry(settings: RegistrySettings) -> Registry:
    """The whole registry over a connection of its own, closed after it (a run reads it afresh: it changes)."""
    db = connect(settings)
    try:
        return load_registry(db)
    finally:
        db.close()
