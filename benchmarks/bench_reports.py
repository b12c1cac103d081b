"""Branch reports: one day of a 1,000-device, 20-branch fleet at one reading per device per 10 s (8.64 M readings)
in the local DuckDB warehouse, reported by ``compute_reports`` for all 20 branches (registry extract through moto
S3, then the report SQL translated from Redshift's dialect).

- Time for the 20 reports against a floor measured in the same run: one plain scan aggregating the same rows
  (per branch and device: count, first and last reading, and the length of every metrics document, so it reads
  every column the reports read), with no JSON navigation, no window function and no percentile.
- Statements per run: one transaction (the extract) and two queries, each scanning ``readings`` once, whatever
  the fleet (targets 1, 2 and 2).
- Warehouse bytes scanned: the logical size of the columns each query reads over the rows in the windows (UTF-8
  byte lengths, 8 bytes a TIMESTAMP or BIGINT), summed over the run's scans, beside the floor's one scan; and the
  rows the table scans of ``readings`` read, from DuckDB's profiler. DuckDB has no counter of bytes read from
  compressed blocks (its profiler's scan "intermediate size" is in-memory vector bytes, several times the data),
  and Redshift's ``SYS_QUERY_DETAIL`` bytes are compressed blocks, so Redshift would read less than stated here.

Readings are generated straight into ``readings`` with SQL (``range()``): each branch's local day, every 10 s,
a few devices with an hour's gap, ten unregistered devices and twenty registered ones that never report.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from devicepipe.registry import Branch, Device, MetricDefinition, Registry
from devicepipe.reports import compute_reports, period_window
from devicepipe.warehouse import DDL
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse

DEVICES = 1_000
BRANCHES = 20
INTERVAL_S = 10
DAY = date(2026, 6, 15)
ZONES = ("UTC", "America/New_York", "Europe/London", "Asia/Kolkata", "Asia/Tokyo")
UNREGISTERED = 10  # the last devices report but are not in the registry
SILENT = 20  # registered, never report
#: Columns each report query reads (activity: keys and times; metrics: keys, time, the metrics document).
QUERY_COLUMNS = {
    "activity": "strlen(branch_id) + strlen(device_id) + 16",
    "metrics": "strlen(branch_id) + strlen(device_id) + 8 + strlen(CAST(metrics AS VARCHAR))",
}
FLOOR_COLUMNS = "strlen(branch_id) + strlen(device_id) + 16 + strlen(CAST(metrics AS VARCHAR))"
FLOOR = """SELECT branch_id, device_id, COUNT(*), MIN(ts), MAX(ts), MAX(seq), SUM(LENGTH(CAST(metrics AS VARCHAR)))
FROM readings WHERE ts >= CAST('{low}' AS TIMESTAMP) AND ts < CAST('{high}' AS TIMESTAMP) GROUP BY 1, 2"""


def branch_ids() -> list[str]:
    return [f"branch-{b:03d}" for b in range(BRANCHES)]


def registry() -> Registry:
    branches = tuple(Branch(b, f"Branch {i}", "us-east-1", ZONES[i % len(ZONES)]) for i, b in enumerate(branch_ids()))
    devices = tuple(
        Device(f"device-{i:05d}", branch_ids()[i % BRANCHES], "fridge")
        for i in [*range(DEVICES - UNREGISTERED), *range(DEVICES, DEVICES + SILENT)]
    )
    metrics = (
        MetricDefinition("fridge", "temp_c", "C", 0.0, 8.0),
        MetricDefinition("fridge", "humidity", "ratio", None, 0.8),
        MetricDefinition("fridge", "door", ""),  # strings: navigated, never numeric
    )
    return Registry(branches, devices, metrics)


def generate(con: Any, reg: Registry) -> None:
    """Each branch's local day of readings, every 10 s; every 50th device silent for an hour mid-day."""
    starts = [(b.branch_id, period_window(DAY, b.time_zone)[0].replace(tzinfo=None)) for b in reg.branches]
    con.execute("CREATE TEMP TABLE day_start (branch_id VARCHAR, start_ts TIMESTAMP)")
    con.executemany("INSERT INTO day_start VALUES (?, ?)", starts)
    con.execute(
        f"""INSERT INTO readings (device_id, branch_id, ts, seq, metrics, extra, origin_region, ingested_at)
        SELECT printf('device-%05d', d.i), s.branch_id, s.start_ts + to_seconds(k.k * {INTERVAL_S}), k.k,
            ('{{"temp_c":' || round(4 + 5 * sin(k.k / 300.0 + d.i), 2)
             || ',"humidity":' || round(0.5 + 0.35 * cos(k.k / 500.0 + d.i), 3)
             || ',"door":"' || CASE WHEN k.k % 97 = 0 THEN 'open' ELSE 'closed' END || '"}}')::JSON,
            '{{}}'::JSON, 'us-east-1', s.start_ts
        FROM range({DEVICES}) AS d(i)
        JOIN day_start AS s ON s.branch_id = printf('branch-%03d', d.i % {BRANCHES})
        CROSS JOIN range({86_400 // INTERVAL_S}) AS k(k)
        WHERE NOT (d.i % 50 = 0 AND k.k BETWEEN 3000 AND 3360)"""
    )
    con.execute("CHECKPOINT")


class Profiled(DuckDBWarehouse):
    """The local warehouse with DuckDB's profiler on: each query's profile is kept."""

    def __init__(self, path: Path, s3: Any) -> None:
        super().__init__(path, s3)
        self.profile_path = path.with_suffix(".profile.json")
        self.profiles: list[dict[str, Any]] = []

    def connect(self, timeout_s: float = 30.0) -> Any:
        con = super().connect(timeout_s)
        con.execute("PRAGMA enable_profiling='json'")
        con.execute(f"PRAGMA profiling_output='{self.profile_path}'")
        return con

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        rows = super().query(sql)
        self.profiles.append(json.loads(self.profile_path.read_text()))
        return rows


def readings_scans(profile: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The table scans of ``readings`` in a query's profile (DuckDB 2's layout: operators under "operator"; older
    versions put them under "children")."""
    stack = list(profile.get("operator", profile.get("children", [])))
    while stack:
        node = stack.pop()
        stack += node.get("children", [])
        if node.get("operator_type", node.get("type")) == "TABLE_SCAN" and str(
            node.get("extra_info", {}).get("Table", "")
        ).endswith("readings"):
            yield node


def main() -> list[tuple[str, float, float, bool]]:
    reg = registry()
    periods = [(b.branch_id, DAY) for b in reg.branches]
    windows = [period_window(DAY, b.time_zone) for b in reg.branches]
    low, high = (min(w[0] for w in windows), max(w[1] for w in windows))
    bounds = {"low": low.replace(tzinfo=None), "high": high.replace(tzinfo=None)}
    now = datetime(2026, 6, 17, tzinfo=UTC)
    with mock_aws(), tempfile.TemporaryDirectory(prefix="devicepipe-bench-") as tmp:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="reports")

        def put_extract(name: str, body: bytes) -> str:
            s3.put_object(Bucket="reports", Key=f"extracts/{name}.jsonl.gz", Body=body)
            return f"s3://reports/extracts/{name}.jsonl.gz"

        plain = DuckDBWarehouse(Path(tmp) / "bench.duckdb", s3)
        plain.execute(DDL)
        started = time.perf_counter()
        print(f"reports: generating {DEVICES:,} devices x {86_400 // INTERVAL_S:,} readings in DuckDB ...", flush=True)
        con = plain.connect()
        generate(con, reg)
        rows = one(con, "SELECT COUNT(*) FROM readings")
        size = one(con, "SELECT database_size FROM pragma_database_size()")
        con.close()
        print(
            f"  {rows:,} readings in {time.perf_counter() - started:.1f} s; database file {size} on disk "
            "(compressed columns and the primary key's index)"
        )

        print("  floor: one plain scan aggregating the same rows ...", flush=True)
        floor_sql = FLOOR.format(**bounds)
        floor_s = min(timed(lambda: plain.query(floor_sql)) for _ in range(3))
        print(f"  reports: compute_reports for {len(periods)} branches' {DAY} ...", flush=True)
        reports: list[dict[str, Any]] = []
        report_s = min(
            timed(lambda: reports.__setitem__(slice(None), compute_reports(plain, reg, periods, put_extract, "", now)))
            for _ in range(2)
        )
        counted = sum(r["summary"]["readings"] for r in reports)
        assert counted == rows, (counted, rows)  # every generated reading is in exactly one branch-day

        profiled = Profiled(Path(tmp) / "bench.duckdb", s3)
        transactions = count_transactions(
            profiled, lambda: compute_reports(profiled, reg, periods, put_extract, "", now)
        )
        queries = profiled.profiles[:]
        profiled.profiles.clear()
        profiled.query(floor_sql)
        (floor_profile,) = profiled.profiles
        scans = [list(readings_scans(p)) for p in queries]
        scanned_rows = sum(s.get("rows_scanned", 0) for q in scans for s in q)
        floor_rows = sum(s.get("rows_scanned", 0) for s in readings_scans(floor_profile))
        logical = logical_bytes(plain, bounds, QUERY_COLUMNS.values())
        floor_bytes = logical_bytes(plain, bounds, [FLOOR_COLUMNS])

    per_report = report_s / len(periods)
    print(
        f"  {len(periods)} reports in {report_s:.2f} s ({per_report * 1000:.0f} ms a branch-day), "
        f"floor {floor_s:.2f} s: ratio {report_s / floor_s:.1f}x"
    )
    print(
        f"  statements per run: {transactions} transaction, {len(queries)} queries, "
        f"{sum(len(q) for q in scans)} scans of readings"
    )
    print(
        f"  bytes scanned (columns read x rows in the windows): {logical / 1e6:,.0f} MB in {scanned_rows:,} rows "
        f"scanned; floor {floor_bytes / 1e6:,.0f} MB in {floor_rows:,} rows"
    )
    return [
        ("report transactions per run", float(transactions), 1.0, transactions == 1),
        ("report queries per run (20 branches)", float(len(queries)), 2.0, len(queries) == 2),
        ("report scans of readings per run", float(sum(len(q) for q in scans)), 2.0, sum(map(len, scans)) == 2),
        ("reports 20 branch-days, s (8.64 M readings) (info)", report_s, 0.0, True),
        ("reports time vs one plain scan (info)", report_s / floor_s, 0.0, True),
        ("report bytes scanned, MB (info)", logical / 1e6, 0.0, True),
        ("report bytes scanned vs one plain scan (info)", logical / floor_bytes, 0.0, True),
    ]


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def count_transactions(warehouse: DuckDBWarehouse, fn: Any) -> int:
    """How many ``execute`` calls (one transaction each) ``fn`` makes."""
    calls = 0
    execute = warehouse.execute

    def counting(statements: Any) -> None:
        nonlocal calls
        calls += 1
        execute(statements)

    warehouse.execute = counting  # type: ignore[method-assign]
    fn()
    return calls


def logical_bytes(warehouse: DuckDBWarehouse, bounds: dict[str, Any], scans: Iterable[str]) -> int:
    """The bytes of the columns each scan reads (an expression per scan), summed over the readings in the windows
    (run on DuckDB directly: it measures the data, it is not report SQL)."""
    con = warehouse.connect()
    try:
        where = f"ts >= '{bounds['low']}' AND ts < '{bounds['high']}'"
        return sum(int(one(con, f"SELECT SUM({e}) FROM readings WHERE {where}")) for e in scans)
    finally:
        con.close()


def one(con: Any, sql: str) -> Any:
    """The single value of a query run on DuckDB directly (setup and measurement, not report SQL)."""
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


if __name__ == "__main__":
    for row in main():
        print(row)
