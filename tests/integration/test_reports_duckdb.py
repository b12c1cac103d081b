"""The report SQL on the local warehouse: readings staged and loaded by the real stager and loader (moto S3 ->
DuckDB), the registry extract COPYed from S3, and figures computed by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devicepipe.loader import Loader, Source
from devicepipe.registry import Branch, Device, MetricDefinition, Registry
from devicepipe.reports import compute_reports
from devicepipe.retry import Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe_tools.events import dynamodb_record, reading, table_item
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse

pytestmark = pytest.mark.integration

REGISTRY = Registry(
    branches=(
        Branch("ny", 'New York <"Main">', "us-east-1", "America/New_York"),
        Branch("in", "Bengaluru", "eu-west-1", "Asia/Kolkata"),
    ),
    devices=(
        Device("ny-f1", "ny", "fridge", installed_on=date(2026, 1, 1)),
        Device("ny-f2", "ny", "fridge"),
        Device("ny-door", "ny", "door"),
        Device("ny-old", "ny", "fridge", retired_on=date(2026, 3, 7)),  # retired before the day
        Device("ny-new", "ny", "fridge", installed_on=date(2026, 3, 9)),  # installed after the day
        Device("in-f1", "in", "fridge"),
    ),
    metrics=(
        MetricDefinition("fridge", "temp_c", "C", 0.0, 8.0),
        MetricDefinition("fridge", "humidity", "ratio", None, 0.8),
        MetricDefinition("door", "door", ""),  # registered, but its values are strings: not a numeric metric
    ),
)
DAY = date(2026, 3, 8)  # New York springs forward: a 23 h day, 2026-03-08T05:00Z -> 2026-03-09T04:00Z


class Pipeline:
    """Stager -> moto S3 -> loader -> DuckDB, and the report run over it."""

    def __init__(self, s3: Any, tmp_path: Path) -> None:
        self.s3 = s3
        self.warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", s3)
        self.stager = Stager(s3, "staging", "us-east-1", Retrier())
        self.loader = Loader(s3, self.warehouse, Source("staging", "us-east-1"), "staging")
        self.sequence = 0

    def load(self, *docs: dict[str, Any]) -> None:
        records = []
        for doc in docs:
            self.sequence += 1
            records.append(dynamodb_record("INSERT", table_item(doc), sequence_number=self.sequence))
        self.stager.stage(list(changes(records)))
        report = self.loader.run()
        assert not report.failed and not report.deferred

    def put_extract(self, name: str, body: bytes) -> str:
        key = f"extracts/{name}.jsonl.gz"
        self.s3.put_object(Bucket="reports", Key=key, Body=body)
        return f"s3://reports/{key}"

    def reports(
        self, periods: list[tuple[str, date]], now: datetime, registry: Registry = REGISTRY
    ) -> list[dict[str, Any]]:
        return compute_reports(self.warehouse, registry, periods, self.put_extract, "", now)

    def report(self, branch_id: str, day: date, now: datetime, registry: Registry = REGISTRY) -> dict[str, Any]:
        (found,) = self.reports([(branch_id, day)], now, registry)
        return found


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("staging", "reports"):
            s3.create_bucket(Bucket=bucket)
        yield Pipeline(s3, tmp_path)


def device(report: dict[str, Any], device_id: str) -> dict[str, Any]:
    (found,) = [d for d in report["devices"] if d["device_id"] == device_id]
    return dict(found)


def gaps(entry: dict[str, Any]) -> list[tuple[str, str, float]]:
    return [(g["from"], g["to"], g["seconds"]) for g in entry["gaps"]]


F1_DAY = [  # ny-f1 around and across 8 March in New York (EST until 07:00Z, EDT after)
    reading("ny-f1", "ny", "2026-03-08T04:59:59.999999Z", 1, temp_c=50),  # 23:59:59.999999 EST on 7 March
    reading("ny-f1", "ny", "2026-03-08T05:00:00Z", 2, temp_c=3, humidity=0.5),  # local midnight: first of the day
    reading("ny-f1", "ny", "2026-03-08T05:10:00Z", 3, temp_c=9.0, humidity=0.875),  # both above their high
    reading("ny-f1", "ny", "2026-03-08T06:59:00Z", 4, temp_c=4, humidity=0.25),  # 01:59 EST, after a 6,540 s gap
    reading("ny-f1", "ny", "2026-03-08T07:00:00Z", 5, temp_c=5, humidity="n/a"),  # 03:00 EDT; humidity not a number
    reading("ny-f1", "in", "2026-03-08T08:00:00Z", 6, temp_c=70),  # sent with another branch: not this branch's
    reading("ny-f1", "ny", "2026-03-09T03:59:59.999999Z", 7, temp_c=-1),  # 23:59:59.999999 EDT, below its low
    reading("ny-f1", "ny", "2026-03-09T04:00:00Z", 8, temp_c=50),  # local midnight of 9 March
]
OTHERS = [
    reading("ny-door", "ny", "2026-03-08T05:30:00Z", 1, door="open"),
    reading("ny-door", "ny", "2026-03-09T03:30:00Z", 2, door="closed"),
    reading("ghost", "ny", "2026-03-08T12:00:00Z", 1, temp_c=100, fan_rpm=1200),  # unregistered; fan_rpm unregistered
    reading("ny-old", "ny", "2026-03-08T10:00:00Z", 1, temp_c=2),  # retired, yet reporting
    reading("in-f1", "in", "2026-03-08T10:00:00Z", 1, temp_c=6),  # another branch
]


def test_a_branch_day_hand_computed(pipeline: Pipeline) -> None:
    # Given a day of readings loaded by the real loader
    pipeline.load(*F1_DAY, *OTHERS)
    # When the report for New York's 8 March runs the next morning
    report = pipeline.report("ny", DAY, datetime(2026, 3, 9, 12, tzinfo=UTC))
    # Then the window is the 23 h local day, not yet final
    assert (report["period_start"], report["period_end"], report["final"]) == (
        "2026-03-08T05:00:00Z",
        "2026-03-09T04:00:00Z",
        False,
    )
    assert report["summary"] == {
        "readings": 9,  # ny-f1 5, ny-door 2, ghost 1, ny-old 1
        "devices_expected": 3,  # ny-f1, ny-f2, ny-door (ny-old retired before, ny-new installed after)
        "devices_reporting": 4,
        "silent_devices": ["ny-f2"],
        "unregistered_devices": ["ghost"],
        "out_of_range": 3,  # temp_c 9 and -1, humidity 0.875
    }
    assert [d["device_id"] for d in report["devices"]] == ["ghost", "ny-door", "ny-f1", "ny-f2", "ny-old"]
    f1 = device(report, "ny-f1")
    assert (f1["kind"], f1["registered"], f1["readings"], f1["first_seen"], f1["last_seen"]) == (
        "fridge",
        True,
        5,
        "2026-03-08T05:00:00Z",
        "2026-03-09T03:59:59.999999Z",
    )
    # temp_c [3, 9, 4, 5, -1]: p95 at row 1 + 0.95 * 4 = 4.8 of the sorted values: 5 + 0.8 * (9 - 5)
    assert f1["metrics"]["temp_c"] == {
        "unit": "C",
        "count": 5,
        "min": -1.0,
        "max": 9.0,
        "avg": 4.0,
        "p95": pytest.approx(8.2, rel=1e-12),
        "low": 0.0,
        "high": 8.0,
        "out_of_range": 2,
    }
    # humidity [0.5, 0.875, 0.25] ("n/a" is no number): p95 at row 2.9: 0.5 + 0.9 * (0.875 - 0.5)
    humidity = f1["metrics"]["humidity"]
    assert (humidity["count"], humidity["min"], humidity["max"], humidity["out_of_range"]) == (3, 0.25, 0.875, 1)
    assert humidity["avg"] == pytest.approx(1.625 / 3, rel=1e-12)
    assert humidity["p95"] == pytest.approx(0.8375, rel=1e-12)
    assert (humidity["unit"], humidity["low"], humidity["high"]) == ("ratio", None, 0.8)
    # Gaps over 900 s: inside the day only (the last reading is 1 us before the period end)
    assert gaps(f1) == [
        ("2026-03-08T05:10:00Z", "2026-03-08T06:59:00Z", 6540.0),
        ("2026-03-08T07:00:00Z", "2026-03-09T03:59:59.999999Z", 75599.999999),
    ]
    # A device whose registered metric is a string: counted, no numeric metric; gaps at both edges
    door = device(report, "ny-door")
    assert (door["readings"], door["metrics"]) == (2, {})
    assert gaps(door) == [
        ("2026-03-08T05:00:00Z", "2026-03-08T05:30:00Z", 1800.0),
        ("2026-03-08T05:30:00Z", "2026-03-09T03:30:00Z", 79200.0),
        ("2026-03-09T03:30:00Z", "2026-03-09T04:00:00Z", 1800.0),
    ]
    # Unregistered: no kind, no thresholds, only registered metric names
    ghost = device(report, "ghost")
    assert (ghost["kind"], ghost["registered"], list(ghost["metrics"])) == (None, False, ["temp_c"])
    assert ghost["metrics"]["temp_c"] == {
        "unit": None,
        "count": 1,
        "min": 100.0,
        "max": 100.0,
        "avg": 100.0,
        "p95": 100.0,
        "low": None,
        "high": None,
        "out_of_range": 0,
    }
    # Silent: one gap over the whole 23 h day
    f2 = device(report, "ny-f2")
    assert (f2["readings"], f2["first_seen"], gaps(f2)) == (
        0,
        None,
        [("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", 82800.0)],
    )
    # Retired before the day, yet reporting: listed as reporting and registered, neither expected nor silent
    assert (device(report, "ny-old")["registered"], device(report, "ny-old")["readings"]) == (True, 1)


def test_each_reading_counts_in_exactly_one_local_day(pipeline: Pipeline) -> None:
    # Given readings on both sides of local midnights in Kolkata (UTC+05:30) and New York (across DST changes)
    pipeline.load(
        *F1_DAY,
        reading("in-f1", "in", "2026-03-07T18:29:59.999999Z", 1, temp_c=1),  # 23:59:59.999999 IST, 7 March
        reading("in-f1", "in", "2026-03-07T18:30:00Z", 2, temp_c=2),  # 00:00 IST, 8 March
        reading("in-f1", "in", "2026-03-08T18:29:59Z", 3, temp_c=3),
        reading("in-f1", "in", "2026-03-08T18:30:00Z", 4, temp_c=4),  # 9 March
        # 1 November in New York falls back: 01:30 happens twice (EDT, then EST); a 25 h day
        reading("ny-f1", "ny", "2026-11-01T03:59:59Z", 10, temp_c=1),  # 31 October, 23:59:59 EDT
        reading("ny-f1", "ny", "2026-11-01T05:30:00Z", 11, temp_c=2),  # 01:30 EDT
        reading("ny-f1", "ny", "2026-11-01T06:30:00Z", 12, temp_c=3),  # 01:30 EST
        reading("ny-f1", "ny", "2026-11-02T04:59:59Z", 13, temp_c=4),  # 23:59:59 EST
        reading("ny-f1", "ny", "2026-11-02T05:00:00Z", 14, temp_c=5),  # 2 November
    )
    periods = [
        ("in", date(2026, 3, 7)),
        ("in", date(2026, 3, 8)),
        ("ny", date(2026, 3, 7)),
        ("ny", date(2026, 3, 8)),
        ("ny", date(2026, 11, 1)),
    ]
    # When one run reports all of them
    reports = pipeline.reports(periods, datetime(2026, 11, 20, tzinfo=UTC))
    # Then each reading lands in its own local day, once
    figures = {
        (r["branch_id"], r["period"]): (
            device(r, key)["readings"],
            device(r, key)["metrics"]["temp_c"]["min"],
            device(r, key)["metrics"]["temp_c"]["max"],
        )
        for r, key in zip(reports, ["in-f1", "in-f1", "ny-f1", "ny-f1", "ny-f1"], strict=True)
    }
    assert figures == {
        ("in", "2026-03-07"): (1, 1.0, 1.0),
        ("in", "2026-03-08"): (2, 2.0, 3.0),
        ("ny", "2026-03-07"): (1, 50.0, 50.0),
        ("ny", "2026-03-08"): (5, -1.0, 9.0),
        ("ny", "2026-11-01"): (3, 2.0, 4.0),
    }
    assert all(r["final"] for r in reports)
    fall_back = reports[4]
    assert (fall_back["period_start"], fall_back["period_end"]) == ("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z")
    assert gaps(device(fall_back, "ny-f1")) == [
        ("2026-11-01T04:00:00Z", "2026-11-01T05:30:00Z", 5400.0),
        ("2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z", 3600.0),  # the same local 01:30, an hour apart
        ("2026-11-01T06:30:00Z", "2026-11-02T04:59:59Z", 80999.0),
    ]
    assert gaps(device(fall_back, "ny-f2")) == [("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z", 90000.0)]


def test_late_readings_update_a_re_run_and_each_run_reads_its_own_extract(pipeline: Pipeline) -> None:
    # Given a first run on part of the day
    pipeline.load(*F1_DAY[:5])
    first = pipeline.report("ny", DAY, datetime(2026, 3, 9, 6, tzinfo=UTC))
    assert (first["summary"]["readings"], first["summary"]["silent_devices"]) == (4, ["ny-door", "ny-f2"])
    assert device(first, "ny-f1")["metrics"]["temp_c"]["out_of_range"] == 1
    # When late readings arrive (a buffering device, a reading inside a gap), a batch is replayed (duplicates),
    # and the registry's threshold changes before the re-run
    pipeline.load(
        reading("ny-f2", "ny", "2026-03-08T20:00:00Z", 1, temp_c=7.5),
        reading("ny-f1", "ny", "2026-03-08T06:00:00Z", 9, temp_c=6),
        *F1_DAY[:5],
    )
    warmer = Registry(REGISTRY.branches, REGISTRY.devices, (MetricDefinition("fridge", "temp_c", "C", 0.0, 10.0),))
    second = pipeline.report("ny", DAY, datetime(2026, 3, 9, 7, tzinfo=UTC), registry=warmer)
    # Then the re-run has the new figures: each reading once, the gap split in two, f2 no longer silent
    assert (second["summary"]["readings"], second["summary"]["silent_devices"]) == (6, ["ny-door"])
    f1 = device(second, "ny-f1")
    assert (f1["readings"], f1["metrics"]["temp_c"]["count"], f1["metrics"]["temp_c"]["avg"]) == (5, 5, 5.4)
    assert gaps(f1)[:2] == [
        ("2026-03-08T05:10:00Z", "2026-03-08T06:00:00Z", 3000.0),
        ("2026-03-08T06:00:00Z", "2026-03-08T06:59:00Z", 3540.0),
    ]
    # with the re-run's registry (9.0 is inside 0..10 now; humidity is no longer defined)
    assert f1["metrics"]["temp_c"]["out_of_range"] == 0 and "humidity" not in f1["metrics"]
    assert device(second, "ny-f2")["metrics"]["temp_c"]["max"] == 7.5
    # And the first run's extract rows are still there (a concurrent run would not have lost them)
    assert pipeline.warehouse.query("SELECT COUNT(DISTINCT run_id) FROM report_periods") == [(2,)]


def test_a_silent_branch_and_a_registry_with_nothing_loaded_yet(pipeline: Pipeline) -> None:
    pipeline.loader.ensure_schema()
    report = pipeline.report("in", DAY, datetime(2026, 3, 9, 12, tzinfo=UTC))
    assert report["summary"] == {
        "readings": 0,
        "devices_expected": 1,
        "devices_reporting": 0,
        "silent_devices": ["in-f1"],
        "unregistered_devices": [],
        "out_of_range": 0,
    }
    assert gaps(report["devices"][0]) == [("2026-03-07T18:30:00Z", "2026-03-08T18:30:00Z", 86400.0)]
