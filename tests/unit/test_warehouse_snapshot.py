"""The warehouse snapshot readers open, `local status`'s loader lines, `local env`'s rendering, fixed ports and
AWS_REGION: without a stack (tests/integration/test_local_env.py runs them against one)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from devicepipe_tools import cli
from devicepipe_tools.local import files
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.env import render
from devicepipe_tools.local.loader_worker import status_lines
from devicepipe_tools.local.net import in_use, port_plan
from devicepipe_tools.local.warehouse_snapshot import SnapshotPublisher, reader

COUNT = "SELECT count(*) FROM readings"
#: The dev extras' tools (duckdb CLI) sit beside the interpreter, on PATH or not.
DUCKDB_CLI = shutil.which("duckdb", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


def count(path: Path) -> int:
    """Rows in ``readings`` as a new reader sees them, in a process of its own (DuckDB's Python module keeps one
    database per path and process: a second connect while one is open shares the first's file)."""
    code = (
        f"import duckdb; c = duckdb.connect({str(path)!r}, read_only=True); print(c.execute({COUNT!r}).fetchone()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.fixture
def writer(tmp_path: Path) -> DuckDBWarehouse:
    warehouse = DuckDBWarehouse(tmp_path / files.WAREHOUSE, None)
    warehouse.execute(["CREATE TABLE readings (device_id VARCHAR, metrics SUPER)"])
    return warehouse


def insert(warehouse: DuckDBWarehouse, *devices: str) -> None:
    warehouse.execute([f"INSERT INTO readings VALUES ('{d}', JSON_PARSE('{{\"t\": 1}}'))" for d in devices])


def test_a_reader_keeps_its_snapshot_while_the_writer_goes_on(writer: DuckDBWarehouse, tmp_path: Path) -> None:
    # Given a published snapshot with one reading, held open by a reader
    publisher = SnapshotPublisher(writer, tmp_path / files.WAREHOUSE_SNAPSHOT)
    insert(writer, "d1")
    assert publisher.publish()
    held = duckdb.connect(str(publisher.path), read_only=True)
    # When the writer commits twice more, publishing after each (its file is never blocked by the reader)
    for device in ("d2", "d3"):
        insert(writer, device)
        assert publisher.publish()
    # Then the held connection still reads its copy, and a new reader sees every row
    assert held.execute(COUNT).fetchone() == (1,)
    assert count(publisher.path) == 3
    assert publisher.publishes == 3
    assert not Path(str(publisher.path) + ".wal").exists()  # the copy is whole in its file
    held.close()


def test_nothing_is_copied_when_nothing_changed(writer: DuckDBWarehouse, tmp_path: Path) -> None:
    publisher = SnapshotPublisher(writer, tmp_path / files.WAREHOUSE_SNAPSHOT)
    insert(writer, "d1")
    assert publisher.publish()
    writer.query("SELECT count(*) FROM readings")  # reads leave the file as it is
    assert not publisher.publish()
    publisher.path.unlink()  # a snapshot gone is published again
    assert publisher.publish()


def test_the_snapshot_answers_the_warehouse_sql_read_only(writer: DuckDBWarehouse, tmp_path: Path) -> None:
    publisher = SnapshotPublisher(writer, tmp_path / files.WAREHOUSE_SNAPSHOT)
    insert(writer, "d1")
    publisher.publish()
    snapshot = reader(publisher.path)
    assert snapshot.query("SELECT device_id FROM readings WHERE JSON_TYPEOF(metrics) = 'object'") == [("d1",)]
    with pytest.raises(Exception, match="read-only"):
        snapshot.execute(["INSERT INTO readings VALUES ('x', NULL)"])


@pytest.mark.skipif(not DUCKDB_CLI, reason="no duckdb CLI (pip install duckdb-cli: the dev extras)")
def test_the_duckdb_cli_reads_the_snapshot(writer: DuckDBWarehouse, tmp_path: Path) -> None:
    # The CLI on PyPI lags the Python package, whose own files it may not read: the snapshot is in an older format.
    publisher = SnapshotPublisher(writer, tmp_path / files.WAREHOUSE_SNAPSHOT)
    insert(writer, "d1", "d2")
    publisher.publish()
    out = subprocess.run(
        [str(DUCKDB_CLI), "-readonly", "-csv", str(publisher.path), "-c", "SELECT count(*) AS n FROM readings"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["n", "2"]


def test_status_shows_the_loaders_last_cycle_lag_error_and_snapshot(tmp_path: Path) -> None:
    doc = {
        "cycles": 7,
        "objects_loaded": 12,
        "quarantined_objects": 0,
        "errors": 2,
        "last_cycle_at": 995.0,
        "last_ok_at": 990.0,
        "lag_s": 4.5,
        "failing": True,
        "last_error": {"at": 995.0, "step": "load", "error": "IOException: Could not set lock"},
        "snapshot": {"path": "/s/warehouse-read.duckdb", "published_at": 990.0, "publishes": 3, "seconds": 0.02},
    }
    (tmp_path / files.LOADER).write_text(json.dumps(doc))
    text = "\n".join(status_lines(tmp_path, now=1000.0))
    assert "loader: 7 cycles, last 5.0 s ago (FAILING), last ok 10.0 s ago" in text
    assert "lag 4.5 s" in text
    assert "last error 5.0 s ago in load: IOException: Could not set lock" in text
    assert "/s/warehouse-read.duckdb (read-only), published 3 times, last 10.0 s ago" in text


def test_status_has_no_loader_lines_before_the_first_cycle(tmp_path: Path) -> None:
    assert status_lines(tmp_path) == []


def test_env_renders_shell_lines_any_shell_evaluates_and_json() -> None:
    env = {"AWS_REGION": "us-east-1", "ODD": "it's $HOME; `x`"}
    out = subprocess.run(
        ["bash", "-c", render(env) + '\nprintf "%s" "$ODD"'], capture_output=True, text=True, check=True
    )
    assert out.stdout == env["ODD"]
    assert json.loads(render(env, as_json=True)) == env


def test_ports_follow_the_plan_and_a_listening_port_is_in_use() -> None:
    assert port_plan(4566, ["us-east-1", "eu-west-1"]) == {
        "moto": 4566,
        "redis": 4567,
        "registry": 4568,
        "read API us-east-1": 4569,
        "read API eu-west-1": 4570,
    }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert in_use(s.getsockname()[1])


def test_aws_region_alone_gives_boto3_its_region(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert boto3.session.Session().region_name is None  # what boto3 does by itself
    cli._accept_aws_region()
    assert boto3.session.Session().region_name == "eu-west-1"
