"""Report periods, the statements a report run sends (Redshift rules, no growth with the fleet), the documents
built from the Data API's value forms, and the CSV and HTML renderings."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from devicepipe.registry import Branch, Device, MetricDefinition, Registry
from devicepipe.reports import (
    CSV_COLUMNS,
    compute_reports,
    due_periods,
    period_window,
    render_csv,
    render_html,
)
from devicepipe_tools import redshift_rules as rules

ROLE = "arn:aws:iam::123456789012:role/devicepipe-us-east-1-WarehouseCopyRole-ABCDEFGHIJKL"
NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- periods -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "tz", "start", "hours"),
    [
        (date(2026, 3, 8), "America/New_York", utc(2026, 3, 8, 5), 23),  # spring forward: 02:00 EST -> 03:00 EDT
        (date(2026, 11, 1), "America/New_York", utc(2026, 11, 1, 4), 25),  # fall back: 02:00 EDT -> 01:00 EST
        (date(2026, 6, 1), "America/New_York", utc(2026, 6, 1, 4), 24),
        (date(2026, 3, 8), "Asia/Kolkata", utc(2026, 3, 7, 18, 30), 24),  # UTC+05:30, no DST
        (date(2026, 3, 29), "Europe/London", utc(2026, 3, 29, 0), 23),
        (date(2026, 9, 6), "America/Santiago", utc(2026, 9, 6, 4), 23),  # midnight skipped: the day starts at 01:00
        (date(2026, 1, 1), "UTC", utc(2026, 1, 1), 24),
    ],
)
def test_a_period_is_the_local_day_in_utc(day: date, tz: str, start: datetime, hours: int) -> None:
    got = period_window(day, tz)
    assert got == (start, start + timedelta(hours=hours))
    assert all(t.tzinfo == UTC for t in got)


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Kolkata", "Europe/London", "Australia/Lord_Howe"])
def test_consecutive_periods_tile_the_year_without_gap_or_overlap(tz: str) -> None:
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(366)]
    windows = [period_window(d, tz) for d in days]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))


def test_due_periods_are_each_branchs_last_completed_local_days() -> None:
    # Given 03:00 UTC on 9 March: still 8 March (23:00 EDT) in New York, already 9 March (08:30) in Kolkata
    registry = Registry(branches=(branch("ny", "America/New_York"), branch("in", "Asia/Kolkata")))
    now = utc(2026, 3, 9, 3)
    assert due_periods(registry, now) == [
        ("ny", date(2026, 3, 6)),
        ("ny", date(2026, 3, 7)),
        ("in", date(2026, 3, 7)),
        ("in", date(2026, 3, 8)),
    ]
    assert due_periods(registry, now, lookback_days=1) == [("ny", date(2026, 3, 7)), ("in", date(2026, 3, 8))]
    # Each due period has ended; the day in progress is not due
    zones = {b.branch_id: b.time_zone for b in registry.branches}
    assert all(period_window(day, zones[b])[1] <= now for b, day in due_periods(registry, now, lookback_days=5))
    with pytest.raises(ValueError, match="timezone-aware"):
        due_periods(registry, now.replace(tzinfo=None))


# --- the statements of a run ---------------------------------------------------------------------------------------


def branch(branch_id: str, tz: str, name: str = "") -> Branch:
    return Branch(branch_id, name or branch_id.upper(), "us-east-1", tz)


def fleet(devices: int) -> Registry:
    return Registry(
        branches=(branch("ny", "America/New_York"), branch("in", "Asia/Kolkata")),
        devices=tuple(Device(f"dev-{i:05d}", ("ny", "in")[i % 2], "fridge") for i in range(devices)),
        metrics=(
            MetricDefinition("fridge", "temp_c", "C", 0.0, 8.0),
            MetricDefinition("fridge", "humidity", "ratio", None, 0.8),
            MetricDefinition("door", "open", ""),  # a reserved word is a valid metric name
        ),
    )


class Recording:
    """A warehouse that records what it is sent and answers the two report queries with canned rows in the
    forms the Data API returns (timestamps and dates as strings, counts as ints, aggregates as floats)."""

    def __init__(self, activity: Sequence[tuple[Any, ...]] = (), metrics: Sequence[tuple[Any, ...]] = ()) -> None:
        self.batches: list[list[str]] = []
        self.queries: list[str] = []
        self.answers = {"a": list(activity), "v": list(metrics)}

    def execute(self, statements: Sequence[str]) -> None:
        self.batches.append(list(statements))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        self.queries.append(sql)
        return self.answers[sql.split(".", 1)[0].removeprefix("SELECT ")]


class Extracts:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def __call__(self, name: str, body: bytes) -> str:
        self.files[name] = body
        return f"s3://devicepipe-us-east-1-reportsbucket-0123456789ab/extracts/run/{name}.jsonl.gz"

    def rows(self, table: str) -> list[dict[str, Any]]:
        (name,) = [n for n in self.files if n.startswith(table + "-")]
        return [json.loads(line) for line in gzip.decompress(self.files[name]).splitlines()]


def run(registry: Registry, warehouse: Recording | None = None, extracts: Extracts | None = None) -> list[Any]:
    periods = [("ny", date(2026, 3, 8)), ("in", date(2026, 3, 8))]
    return compute_reports(warehouse or Recording(), registry, periods, extracts or Extracts(), ROLE, NOW)


def test_a_run_is_one_transaction_and_two_queries_every_statement_passing_the_redshift_rules() -> None:
    warehouse = Recording()
    run(fleet(10), warehouse)
    (batch,) = warehouse.batches
    assert len(warehouse.queries) == 2
    rules.guard(batch)
    for sql in warehouse.queries:
        rules.guard([sql])
    # LOCK before the extract's DELETE + COPY of each table (the tables are created first: LOCK needs them)
    assert [s.split()[0] for s in batch] == ["CREATE"] * 3 + ["LOCK"] + ["DELETE", "COPY"] * 3
    assert all(f"IAM_ROLE '{ROLE}'" in s for s in batch if s.startswith("COPY"))
    # Metrics are navigated by their registered names, quoted (``open`` is a reserved word)
    assert 'r.metrics."open"' in warehouse.queries[1] and 'r.metrics."temp_c"' in warehouse.queries[1]


def test_no_statement_grows_with_the_fleet() -> None:
    small, large = Recording(), Recording()
    run(fleet(2), small)
    run(fleet(5_000), large)
    sizes = [[len(s.encode()) for s in w.batches[0] + w.queries] for w in (small, large)]
    assert sizes[0] == sizes[1]
    assert max(sizes[1]) < rules.MAX_STATEMENT_BYTES // 20


def test_the_extract_holds_the_registry_and_the_requested_windows() -> None:
    extracts = Extracts()
    registry = fleet(3)
    run(registry, extracts=extracts)
    periods = extracts.rows("report_periods")
    assert [(p["branch_id"], p["period"], p["period_start"], p["period_end"]) for p in periods] == [
        ("ny", "2026-03-08", "2026-03-08 05:00:00", "2026-03-09 04:00:00"),
        ("in", "2026-03-08", "2026-03-07 18:30:00", "2026-03-08 18:30:00"),
    ]
    assert [d["device_id"] for d in extracts.rows("report_devices")] == [d.device_id for d in registry.devices]
    assert {(m["kind"], m["metric"], m["low"], m["high"]) for m in extracts.rows("report_metrics")} == {
        ("fridge", "temp_c", 0.0, 8.0),
        ("fridge", "humidity", None, 0.8),
        ("door", "open", None, None),
    }
    assert len({row["run_id"] for table in REPORT_TABLES for row in extracts.rows(table)}) == 1


REPORT_TABLES = ("report_periods", "report_devices", "report_metrics")


def test_documents_from_the_data_apis_value_forms() -> None:
    # Given the warehouse's rows as the Data API returns them
    activity = [
        # (branch, period, device, gap_from, ts, is_last, readings, first_seen)
        ("ny", "2026-03-08", "dev-00000", "2026-03-08 05:00:00", "2026-03-08 06:00:00", 0, 3, "2026-03-08 06:00:00"),
        ("ny", "2026-03-08", "dev-00000", "2026-03-08 06:00:00", "2026-03-08 09:30:00.5", 0, 3, "2026-03-08 06:00:00"),
        ("ny", "2026-03-08", "dev-00000", "2026-03-08 09:30:00.5", "2026-03-08 09:35:00", 1, 3, "2026-03-08 06:00:00"),
        ("ny", "2026-03-08", "ghost", "2026-03-08 05:00:00", "2026-03-08 05:01:00", 1, 1, "2026-03-08 05:01:00"),
    ]
    metrics = [("ny", "2026-03-08", "dev-00000", "temp_c", 3, -1.0, 9.0, 4.0, 8.2, 2)]
    reports = run(fleet(4), Recording(activity, metrics))
    ny, kolkata = reports
    # Then the shape is the documented one
    assert list(ny) == [
        "schema",
        "branch_id",
        "branch_name",
        "time_zone",
        "period",
        "period_start",
        "period_end",
        "generated_at",
        "final",
        "gap_threshold_s",
        "summary",
        "devices",
    ]
    assert (ny["period_start"], ny["period_end"], ny["generated_at"], ny["final"]) == (
        "2026-03-08T05:00:00Z",
        "2026-03-09T04:00:00Z",
        "2026-03-09T12:00:00Z",
        False,
    )
    assert ny["summary"] == {
        "readings": 4,
        "devices_expected": 2,
        "devices_reporting": 2,
        "silent_devices": ["dev-00002"],
        "unregistered_devices": ["ghost"],
        "out_of_range": 2,
    }
    dev = ny["devices"][0]
    assert (dev["device_id"], dev["kind"], dev["registered"], dev["readings"]) == ("dev-00000", "fridge", True, 3)
    assert (dev["first_seen"], dev["last_seen"]) == ("2026-03-08T06:00:00Z", "2026-03-08T09:35:00Z")
    assert dev["gaps"] == [
        {"from": "2026-03-08T05:00:00Z", "to": "2026-03-08T06:00:00Z", "seconds": 3600.0},
        {"from": "2026-03-08T06:00:00Z", "to": "2026-03-08T09:30:00.500000Z", "seconds": 12600.5},
        {"from": "2026-03-08T09:35:00Z", "to": "2026-03-09T04:00:00Z", "seconds": 66300.0},
    ]
    assert dev["metrics"] == {
        "temp_c": {
            "unit": "C",
            "count": 3,
            "min": -1.0,
            "max": 9.0,
            "avg": 4.0,
            "p95": 8.2,
            "low": 0.0,
            "high": 8.0,
            "out_of_range": 2,
        }
    }
    assert [d["device_id"] for d in ny["devices"]] == ["dev-00000", "dev-00002", "ghost"]
    ghost = ny["devices"][2]
    assert (ghost["kind"], ghost["registered"], ghost["metrics"]) == (None, False, {})
    # A branch without readings: every expected device silent, one gap over the whole day
    assert kolkata["summary"]["silent_devices"] == ["dev-00001", "dev-00003"]
    assert kolkata["devices"][0]["gaps"] == [
        {"from": "2026-03-07T18:30:00Z", "to": "2026-03-08T18:30:00Z", "seconds": 86400.0}
    ]


def test_a_report_is_final_a_day_after_its_period() -> None:
    registry = fleet(1)
    end = period_window(date(2026, 3, 8), "America/New_York")[1]
    for now, final in [(end + timedelta(days=1) - timedelta(microseconds=1), False), (end + timedelta(days=1), True)]:
        (report,) = compute_reports(Recording(), registry, [("ny", date(2026, 3, 8))], Extracts(), ROLE, now)
        assert report["final"] is final


def test_a_running_period_ends_its_last_gap_now() -> None:
    now = utc(2026, 3, 8, 10)
    (report,) = compute_reports(Recording(), fleet(1), [("ny", date(2026, 3, 8))], Extracts(), ROLE, now)
    assert report["devices"][0]["gaps"] == [
        {"from": "2026-03-08T05:00:00Z", "to": "2026-03-08T10:00:00Z", "seconds": 18000.0}
    ]


def test_requests_the_run_cannot_make_are_refused_before_any_statement() -> None:
    warehouse = Recording()
    with pytest.raises(ValueError, match="not in the registry"):
        compute_reports(warehouse, fleet(1), [("nowhere", date(2026, 3, 8))], Extracts(), ROLE, NOW)
    bad = Registry(branches=fleet(1).branches, metrics=(MetricDefinition("fridge", "Temp C"),))
    with pytest.raises(ValueError, match="metric names"):
        compute_reports(warehouse, bad, [("ny", date(2026, 3, 8))], Extracts(), ROLE, NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_reports(warehouse, fleet(1), [("ny", date(2026, 3, 8))], Extracts(), ROLE, datetime(2026, 3, 9))
    assert warehouse.batches == [] and warehouse.queries == []
    assert compute_reports(warehouse, fleet(1), [], Extracts(), ROLE, NOW) == []


def test_a_registry_without_metric_definitions_skips_the_metrics_query() -> None:
    warehouse = Recording()
    registry = Registry(branches=fleet(1).branches, devices=fleet(1).devices)
    (report, _) = run(registry, warehouse)
    assert len(warehouse.queries) == 1 and report["devices"][0]["metrics"] == {}


# --- rendering -------------------------------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script> & "Smith, Jones" <img src=x onerror=alert(1)>'


def a_report() -> dict[str, Any]:
    activity = [
        ("ny", "2026-03-08", "dev-00000", "2026-03-08 05:00:00", "2026-03-08 06:00:00", 1, 2, "2026-03-08 05:10:00"),
        ("ny", "2026-03-08", 'odd,"id"', "2026-03-08 05:00:00", "2026-03-08 05:01:00", 1, 1, "2026-03-08 05:01:00"),
    ]
    metrics = [
        ("ny", "2026-03-08", "dev-00000", "humidity", 2, 0.25, 0.875, 0.5625, 0.85625, 1),
        ("ny", "2026-03-08", "dev-00000", "temp_c", 2, 3.0, 5.0, 4.0, 4.9, 0),
    ]
    registry = fleet(2)
    registry = Registry((branch("ny", "America/New_York", HOSTILE),), registry.devices, registry.metrics)
    (report,) = compute_reports(
        Recording(activity, metrics), registry, [("ny", date(2026, 3, 8))], Extracts(), ROLE, NOW
    )
    return report


def test_the_csv_parses_back_to_one_row_per_device_and_metric() -> None:
    report = a_report()
    text = render_csv(report)
    assert text.endswith("\r\n") and "\r\n" in text.rstrip("\r\n")  # RFC 4180 line ends
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["device_id"], r["metric"]) for r in rows] == [
        ("dev-00000", "humidity"),
        ("dev-00000", "temp_c"),
        ('odd,"id"', ""),  # no numeric metric: one row, metric columns empty
    ]
    humidity = rows[0]
    assert (humidity["kind"], humidity["registered"], humidity["readings"]) == ("fridge", "true", "2")
    assert (float(humidity["avg"]), float(humidity["p95"]), humidity["low"], float(humidity["high"])) == (
        0.5625,
        0.85625,
        "",
        0.8,
    )
    assert humidity["out_of_range"] == "1" and rows[2]["registered"] == "false" and rows[2]["kind"] == ""


class Tags(HTMLParser):
    """Every tag of a page with its attributes, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_html_page_escapes_everything_and_loads_nothing() -> None:
    page = render_html(a_report())
    parsed = Tags()
    parsed.feed(page)
    names = {tag for tag, _ in parsed.tags}
    # The hostile name is text, never markup
    assert HOSTILE in "".join(parsed.text)
    page_tags = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p"}
    assert names <= page_tags | {"table", "thead", "tbody", "tr", "th", "td"}
    # Self-contained: no attribute loads anything, no handler, and a CSP that allows inline CSS only
    assert not [a for _, attrs in parsed.tags for a in attrs if a in {"src", "href"} or a.startswith("on")]
    (csp,) = [a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv")]
    assert csp == "default-src 'none'; style-src 'unsafe-inline'"
    # The figures a reader looks for are there
    assert 'odd,"id"' in parsed.text and "0.85625" in parsed.text and 'class="n bad">1<' in page
