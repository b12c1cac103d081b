"""The loader against moto S3 (objects written by the real stager) and the DuckDB warehouse."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from devicepipe.compaction import Sizing
from devicepipe.loader import COMPACTED_PREFIX, LATE_ARRIVAL_S, Loader, Source, quarantine_key
from devicepipe.retry import Deadline, Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe.warehouse import LoadFailed, RedshiftDataApi
from devicepipe_tools import cli, redshift_rules
from devicepipe_tools.events import dynamodb_record, insert_batch, reading, table_item
from devicepipe_tools.local import loader_worker, stack
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.staging_replication import StagingReplicator, replication_prefixes
from devicepipe_tools.template import ROOT, load_template
from functions.loader import app as loader_app

pytestmark = pytest.mark.integration
US = Source("staging", "us-east-1")


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="staging")
        yield client


def stage_batches(s3: Any, batches: int, per_batch: int = 40, first_seq: int = 0) -> int:
    """Stage readings through the real stager; returns how many distinct readings were staged."""
    stager = Stager(s3, "staging", "us-east-1", Retrier())
    for b in range(batches):
        stager.stage(list(changes(insert_batch(b, per_batch, first_seq=first_seq))))
    return batches * per_batch


def rows(warehouse: DuckDBWarehouse) -> list[tuple[Any, ...]]:
    return warehouse.query("SELECT device_id, ts, seq FROM readings")


def loader_for(s3: Any, tmp_path: Path, **kw: Any) -> Loader:
    return Loader(s3, DuckDBWarehouse(tmp_path / "wh.duckdb", s3), US, "staging", **kw)


#: The clock of the watermark tests: 2026-11-18T11:06:40Z.
NOW = 1_795_000_000.0
HOUR = 3600


def line(device: str, seq: int, ts: str = "2026-11-02T09:00:00.000000Z", metrics: str = "{}") -> bytes:
    """One staged row as the stager writes it."""
    return (
        f'{{"device_id":"{device}","branch_id":"b","ts":"{ts}","seq":{seq},"metrics":{metrics},"extra":{{}},'
        f'"origin_region":"us-east-1","ingested_at":"{ts}"}}\n'
    ).encode()


def key_at(epoch_s: float, name: str, origin: str = "us-east-1") -> str:
    """A staged key in the hour of ``epoch_s``, laid out as ``staging.object_key`` lays it out."""
    return time.strftime(f"readings/origin={origin}/dt=%Y-%m-%d/hour=%H/{name}.jsonl.gz", time.gmtime(epoch_s))


def put(s3: Any, key: str, *lines: bytes, body: bytes | None = None) -> str:
    """Stage an object (gzip of the lines, or ``body`` as is); its URL."""
    s3.put_object(Bucket="staging", Key=key, Body=gzip.compress(b"".join(lines), mtime=0) if body is None else body)
    return f"s3://staging/{key}"


def corrupt_gzip() -> bytes:
    """A gzip object whose deflate stream is damaged (zlib fails on it, not the gzip header check)."""
    good = gzip.compress(b"".join(line(f"c{i}", i) for i in range(200)), mtime=0)
    return good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:]


class Recording:
    """A warehouse that records what the loader sends it and how many rows its queries return."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[str] = []
        self.rows_read = 0

    def execute(self, statements: Sequence[str]) -> None:
        self.sent += statements
        self.inner.execute(statements)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        self.sent.append(sql)
        rows: list[tuple[Any, ...]] = self.inner.query(sql)
        self.rows_read += len(rows)
        return rows


class Refusing:
    """A warehouse that fails every load permanently, as a missing grant would (no row is to blame)."""

    def __init__(self, inner: DuckDBWarehouse) -> None:
        self.inner = inner
        self.loads = 0

    def execute(self, statements: Sequence[str]) -> None:
        if any(s.startswith("COPY") for s in statements):
            self.loads += 1
            raise LoadFailed("ERROR: permission denied for relation readings", retryable=False)
        self.inner.execute(statements)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.inner.query(sql)


def listed_keys(s3: Any) -> list[int]:
    """Keys S3 returns to each ListObjectsV2 call of this client from now on."""
    counts: list[int] = []
    s3.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda parsed, **_: counts.append(len(parsed.get("Contents", [])))
    )
    return counts


def test_one_copy_per_manifest_and_a_repeated_load_changes_nothing(s3: Any, tmp_path: Path) -> None:
    # Given 7 staged objects, a duplicate of one batch among them, and manifests of at most 3 objects
    expected = stage_batches(s3, 6)
    stage_batches(s3, 1, first_seq=50_000)  # the same readings as batch 0, staged again by a retried batch
    loader = loader_for(s3, tmp_path, max_objects=3)
    # When a cycle runs
    report = loader.run()
    # Then one COPY per manifest loaded every reading once
    assert (report.pending_objects, report.manifests, report.copies, report.loaded_objects) == (7, 3, 3, 7)
    assert loader.warehouse.copies == 6  # type: ignore[attr-defined]  # per manifest: its objects, its ledger file
    got = rows(loader.warehouse)  # type: ignore[arg-type]
    assert len(got) == len(set(got)) == expected
    # And a second cycle finds nothing, and a forced reload of a manifest changes nothing
    assert loader.run().pending_objects == 0
    loader.load(loader.plan(loader.staged())[0])
    assert sorted(rows(loader.warehouse)) == sorted(got)  # type: ignore[arg-type]
    assert loader.warehouse.query("SELECT COUNT(*) FROM load_ledger") == [(3,)]


def test_a_cycle_copies_a_few_joined_files_and_the_ledger_still_records_every_object(s3: Any, tmp_path: Path) -> None:
    """Issue 16: one staged object per stream batch is about 115 KiB at most (Lambda's 6 MB event), 9x below
    Redshift's 1 MB for COPY input. The load joins its objects into a slice-multiple of files instead."""
    # Given 12 staged objects, and a warehouse of 2 slices whose files should hold a third of them at least
    expected = stage_batches(s3, 12)
    staged = Loader(s3, None, US, "staging").staged()  # type: ignore[arg-type]
    total = sum(o.size for o in staged)
    loader = loader_for(s3, tmp_path, sizing=Sizing(min_file_bytes=total // 3, slices=2))
    # When a cycle runs
    report = loader.run()
    # Then one COPY read 2 joined files (one a slice), holding every reading once
    assert (report.loaded_objects, report.copies, report.copy_files) == (12, 1, 2)
    (manifest_key,) = report.loaded_manifests
    entries = json.loads(s3.get_object(Bucket="staging", Key=manifest_key)["Body"].read())["entries"]
    names = [e["url"].rpartition("/")[2] for e in entries]
    assert names == ["part-0000-of-0002.jsonl.gz", "part-0001-of-0002.jsonl.gz"]
    assert all(e["url"].startswith(f"s3://staging/{COMPACTED_PREFIX}/") for e in entries)
    assert report.copy_bytes == sum(e["meta"]["content_length"] for e in entries)
    got = rows(loader.warehouse)  # type: ignore[arg-type]
    assert len(got) == len(set(got)) == expected
    # And the ledger records the staged objects themselves: nothing is pending, exactly once holds
    assert loader.warehouse.query("SELECT COUNT(*) FROM loaded_objects") == [(12,)]
    assert loader.run().pending_objects == 0
    # And a retried load of the same objects rewrites the same joined files, and adds nothing
    joined = {o["Key"] for o in s3.list_objects_v2(Bucket="staging", Prefix=COMPACTED_PREFIX)["Contents"]}
    loader.load(loader.plan(staged)[0])
    assert {o["Key"] for o in s3.list_objects_v2(Bucket="staging", Prefix=COMPACTED_PREFIX)["Contents"]} == joined
    assert sorted(rows(loader.warehouse)) == sorted(got)  # type: ignore[arg-type]


def test_concurrent_runs_load_each_reading_once(s3: Any, tmp_path: Path) -> None:
    expected = stage_batches(s3, 8)
    loaders = [loader_for(s3, tmp_path, max_objects=2) for _ in range(3)]
    for loader in loaders:
        loader.ensure_schema()
    reports: list[Any] = []
    threads = [threading.Thread(target=lambda ld=ld: reports.append(ld.run())) for ld in loaders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whatever each run did (loaded, or deferred on a write conflict), nothing is doubled, and one more cycle
    # finishes what was deferred.
    loaders[0].run()
    got = rows(loaders[0].warehouse)  # type: ignore[arg-type]
    assert len(got) == len(set(got)) == expected
    assert not any(r.failed for r in reports)


def test_a_corrupt_object_is_quarantined_with_its_line_and_later_objects_still_load(s3: Any, tmp_path: Path) -> None:
    expected = stage_batches(s3, 3)
    good_line = (
        b'{"device_id":"x","branch_id":"b","ts":"2026-11-02T09:00:00.000000Z","seq":1,"metrics":{},"extra":{}}\n'
    )
    bad = gzip.compress(good_line + b'{"device_id": "x", "ts": \n', mtime=0)
    key = "readings/origin=us-east-1/dt=2026-11-02/hour=09/0000-corrupt.jsonl.gz"
    s3.put_object(Bucket="staging", Key=key, Body=bad)
    loader = loader_for(s3, tmp_path, max_objects=1)
    report = loader.run()
    (failed,) = report.failed
    assert failed["object"] == f"s3://staging/{key}"
    (error,) = failed["errors"]
    assert (error["file"], error["line"]) == (f"s3://staging/{key}", 2) and "invalid JSON" in error["reason"]
    assert report.loaded_objects == 3 and len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]
    # The quarantined object stays out of later cycles
    assert loader.run().pending_objects == 0
    assert [d["object"] for d in loader.quarantine_records()] == [failed["object"]]


def test_one_bad_object_holds_back_no_other_object_of_its_manifest(s3: Any, tmp_path: Path) -> None:
    """Issue 16: one bad object failed its whole manifest (up to 500 objects), holding back every good reading in
    it, and the load-lag alarm watched the wrong age."""
    # Given 6 good objects and a bad one among them, all in one manifest
    expected = stage_batches(s3, 6)
    bad = put(s3, "readings/origin=us-east-1/dt=2026-11-02/hour=09/0-bad.jsonl.gz", line("x", 1), b'{"device_id": \n')
    loader = loader_for(s3, tmp_path)
    # When a cycle runs
    report = loader.run()
    # Then the bad object is moved aside with the warehouse's reason, and the rest load in the same cycle
    assert (report.manifests, report.loaded_objects, [d["object"] for d in report.failed]) == (1, 6, [bad])
    assert report.copies == 2  # the warehouse named the file: no halving needed
    assert len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]
    record = json.loads(
        s3.get_object(Bucket="staging", Key=quarantine_key(bad.removeprefix("s3://staging/")))["Body"].read()
    )
    assert record["object"] == bad and "invalid JSON" in record["errors"][0]["reason"]
    # the warehouse named a line of the joined file; the loader pinned it on the object holding that line
    assert record["errors"][0]["line"] == 2
    assert record["errors"][0]["joined"].startswith(f"s3://staging/{COMPACTED_PREFIX}/")
    assert report.oldest_pending_age_s == 0.0  # nothing left waiting: the lag is not held up by the bad object
    assert loader.run().pending_objects == 0


def test_a_row_the_warehouse_rejects_without_naming_its_file_is_found_by_halving(s3: Any, tmp_path: Path) -> None:
    # Given 7 good objects and one whose row has a time the warehouse cannot read (it names no file for it)
    expected = stage_batches(s3, 7)
    bad = put(s3, "readings/origin=us-east-1/dt=2026-11-02/hour=09/3-bad-ts.jsonl.gz", line("y", 1, ts="yesterday"))
    loader = loader_for(s3, tmp_path)
    report = loader.run()
    # Then halving the manifest down to the object quarantines it alone, in a few loads (8 objects: 3 levels)
    assert (report.loaded_objects, [d["object"] for d in report.failed]) == (7, [bad])
    assert report.copies <= 1 + 2 * 3
    assert len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]


def test_a_corrupt_gzip_is_quarantined_instead_of_failing_every_cycle(s3: Any, tmp_path: Path) -> None:
    """Locally, a damaged deflate stream raised zlib.error out of the cycle, every cycle, forever."""
    expected = stage_batches(s3, 2)
    bad = put(s3, "readings/origin=us-east-1/dt=2026-11-02/hour=09/1-corrupt.jsonl.gz", body=corrupt_gzip())
    loader = loader_for(s3, tmp_path)
    report = loader.run()
    assert report.loaded_objects == 2 and [d["object"] for d in report.failed] == [bad]
    assert "not gzip" in report.failed[0]["errors"][0]["reason"]
    assert len(rows(loader.warehouse)) == expected and loader.run().pending_objects == 0  # type: ignore[arg-type]


def test_failures_pinned_on_nothing_are_tried_again_once_something_loads(s3: Any, tmp_path: Path) -> None:
    # Given two objects whose rows the warehouse rejects without naming them, in manifests of their own, sorted
    # before a good one: when they fail, nothing has loaded yet to prove the warehouse path works
    bad = [
        put(s3, f"readings/origin=us-east-1/dt=2026-11-02/hour=09/0-bad-{i}.jsonl.gz", line("y", i, ts="yesterday"))
        for i in range(2)
    ]
    stage_batches(s3, 1)
    report = loader_for(s3, tmp_path, max_objects=1).run()
    # Then once the good one has loaded, both are tried again in the same cycle and quarantined
    assert report.loaded_objects == 1 and sorted(d["object"] for d in report.failed) == bad
    assert report.unattributed == []


def test_a_failure_no_object_explains_quarantines_nothing(s3: Any, tmp_path: Path) -> None:
    """A permission or SQL error fails every load: halving must not pin it on the objects one by one."""
    stage_batches(s3, 4)
    refusing = Refusing(DuckDBWarehouse(tmp_path / "wh.duckdb", s3))
    loader = Loader(s3, refusing, US, "staging")
    report = loader.run()
    assert report.failed == [] and report.loaded_objects == 0 and len(report.unattributed) == 1
    assert refusing.loads == 3  # the manifest, then its two halves: neither loads, so it is not the data
    assert len(loader.pending()) == 4 and loader.quarantine_records() == []


class Paused:
    """A warehouse that is paused for its first ``n`` loads, then answers."""

    def __init__(self, inner: DuckDBWarehouse, n: int) -> None:
        self.inner = inner
        self.n = n

    def execute(self, statements: Sequence[str]) -> None:
        if any(s.startswith("COPY") for s in statements) and self.n > 0:
            self.n -= 1
            raise LoadFailed("Cluster is paused or resuming", retryable=True)
        self.inner.execute(statements)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.inner.query(sql)


def test_a_paused_warehouse_defers_the_cycle_and_nothing_is_lost(s3: Any, tmp_path: Path) -> None:
    expected = stage_batches(s3, 4)
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", s3)
    loader = Loader(s3, Paused(warehouse, 1), US, "staging", max_objects=2)
    first = loader.run()
    assert first.deferred and "paused" in first.deferred and not first.failed and first.loaded_objects == 0
    second = loader.run()
    assert second.loaded_objects == 4 and len(rows(warehouse)) == expected


def test_a_quarantined_object_loads_again_once_fixed(s3: Any, tmp_path: Path) -> None:
    key = "readings/origin=us-east-1/dt=2026-11-02/hour=09/0001-fixable.jsonl.gz"
    put(s3, key, body=b"not gzip")
    loader = loader_for(s3, tmp_path)
    (failed,) = loader.run().failed
    assert loader.quarantine_record(key) == failed
    # The operator fixes the object, then reloads it
    put(s3, key, line("f", 1))
    loader.reload(key)
    assert rows(loader.warehouse) == [("f", rows(loader.warehouse)[0][1], 1)]  # type: ignore[arg-type]
    assert loader.quarantine_records() == [] and loader.run().pending_objects == 0
    with pytest.raises(LoadFailed, match="is not quarantined"):
        loader.reload(key)


def test_data_api_statement_that_outlives_the_deadline_is_cancelled_against_moto() -> None:
    # moto's statements never leave STARTED: the poll must stop at the deadline and cancel, not hang
    with mock_aws():
        client = boto3.client("redshift-data")
        remaining = iter([10_000, 10_000, 1_500, 0])
        api = RedshiftDataApi(
            client, "devicepipe-warehouse", "devicepipe", Deadline(lambda: next(remaining), 1_000), sleep=lambda _: None
        )
        with pytest.raises(LoadFailed) as info:
            api.query("SELECT object_key FROM loaded_objects")
        assert info.value.retryable and "cancelled" in str(info.value)


@pytest.mark.parametrize("event", ["loader/scheduled.json", "loader/backfill-one-day.json"])
def test_loader_handler_runs_its_sample_events(
    s3: Any, tmp_path: Path, event: str, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given staged readings and the handler's loader built on the local warehouse (the Data API needs AWS)
    expected = stage_batches(s3, 2)
    loader = loader_for(s3, tmp_path)
    monkeypatch.setattr(loader_app, "_loader", lambda: (loader, Deadline.unlimited()))
    # When the sample event is handled
    report = loader_app.lambda_handler(json.loads((ROOT / "events" / event).read_text()), lambda_context)
    # Then the day's objects are loaded (both events cover them: every pending object, or that day's prefix)
    assert report["loaded_objects"] == 2 and not report["failed"]
    assert len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]


def test_the_handler_counts_quarantined_objects_apart_from_unattributed_failures(
    s3: Any, tmp_path: Path, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stage_batches(s3, 2)
    put(s3, "readings/origin=us-east-1/dt=2026-11-02/hour=09/0-bad.jsonl.gz", body=b"not gzip")
    loader = loader_for(s3, tmp_path)
    monkeypatch.setattr(loader_app, "_loader", lambda: (loader, Deadline.unlimited()))
    capsys.readouterr()
    report = loader_app.lambda_handler({}, lambda_context)
    assert report["loaded_objects"] == 2 and len(report["failed"]) == 1
    (emf,) = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"_aws"' in out]
    assert (emf["ObjectsQuarantined"], emf["LoadFailures"], emf["ObjectsPending"]) == ([1.0], [0.0], [0.0])


def test_a_backfill_prefix_outside_the_staging_area_is_refused(lambda_context: Any) -> None:
    with pytest.raises(ValueError, match="must start with readings/"):
        loader_app.lambda_handler({"prefix": "manifests/"}, lambda_context)


def test_load_lag_is_the_age_of_the_oldest_object_left_pending(s3: Any, tmp_path: Path) -> None:
    stage_batches(s3, 3)
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", s3)
    deferred = Loader(s3, Paused(warehouse, 5), US, "staging", max_objects=1).run()
    assert deferred.oldest_pending_age_s >= 0.0 and deferred.pending_objects == 3
    assert deferred.oldest_pending_age_s < 120  # just staged
    assert Loader(s3, warehouse, US, "staging").run().oldest_pending_age_s == 0.0


def test_the_secondarys_staging_replicated_in_loads_once_beside_the_primarys(tmp_path: Path) -> None:
    """The secondary region's staged objects reach the primary's bucket by S3 replication under their own keys
    (replicas keep key, metadata and creation time: https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication.html),
    so the loader reads one bucket of its region and the ledger dedups replicas by key like any other object.
    Locally the loader worker's ``StagingReplicator`` stands in for S3 replication, with the template's prefix."""
    with mock_aws():
        # Given each region's stager writing its own bucket, and the rule's prefix for the secondary
        us, eu = boto3.client("s3", region_name="us-east-1"), boto3.client("s3", region_name="eu-west-1")
        us.create_bucket(Bucket="staging-us")
        eu.create_bucket(Bucket="staging-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        Stager(us, "staging-us", "us-east-1", Retrier()).stage(list(changes(insert_batch(0, 40))))
        eu_stager = Stager(eu, "staging-eu", "eu-west-1", Retrier())
        eu_stager.stage(list(changes(insert_batch(1, 40, origin_region="eu-west-1"))))
        (prefix,) = replication_prefixes(load_template(), "eu-west-1")
        assert prefix == "readings/origin=eu-west-1/"
        replicator = StagingReplicator(eu, "staging-eu", us, "staging-us", prefix)
        # When it replicates (twice: the second finds nothing new) and the primary's loader runs
        assert (replicator.run(), replicator.run()) == (1, 0)
        warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", us)
        loader = Loader(us, warehouse, Source("staging-us", "us-east-1"), "staging-us", region="us-east-1")
        report = loader.run()
        # Then both regions' readings are loaded once, from the primary's bucket only
        assert (report.pending_objects, report.loaded_objects) == (2, 2)
        assert len(rows(warehouse)) == len(set(rows(warehouse))) == 80
        assert {o.source.bucket for o in loader.staged()} == {"staging-us"}
        # And a retried batch in the secondary (same key) replicated again loads nothing twice
        eu_stager.stage(list(changes(insert_batch(1, 40, origin_region="eu-west-1"))))
        replicator.copied.clear()
        assert replicator.run() == 1
        assert loader.run().pending_objects == 0 and len(rows(warehouse)) == 80


# --- a cycle's cost is flat in history (issue 16: 0.2 s at 1,000 staged objects, 4.5 s at 20,000) --------------


def stage_hours(s3: Any, hours: Sequence[int], per_hour: int = 2, origin: str = "us-east-1") -> list[str]:
    """``per_hour`` one-row objects in each hour ``NOW + h * HOUR`` (h <= 0 for the past)."""
    return [
        put(s3, key_at(NOW + h * HOUR, f"{origin}-{h}-{i}", origin), line(f"{origin}{h}", i, metrics=f'{{"h":{h}}}'))
        for h in hours
        for i in range(per_hour)
    ]


def test_a_scheduled_cycle_lists_and_reads_only_the_recent_hours(s3: Any, tmp_path: Path) -> None:
    """Each cycle listed every staged object and read the whole ledger: its cost grew without bound."""
    # Given two days of staged history, loaded (the first cycle, with no watermark yet, lists it all)
    history = stage_hours(s3, range(-48, 0))
    loader = loader_for(s3, tmp_path, clock=lambda: NOW)
    assert loader.run().loaded_objects == len(history) == 96
    # When a new object arrives and the next cycle runs
    new = stage_hours(s3, [0], per_hour=1)
    listed = listed_keys(s3)
    warehouse = Recording(loader.warehouse)
    loader.warehouse = warehouse
    report = loader.run()
    # Then it loads it, having listed and read from the ledger only the hours since the watermark, not history
    assert report.loaded_objects == 1 and report.failed == [] and rows_count(warehouse.inner) == 97
    window = (LATE_ARRIVAL_S // HOUR + 1) * 2 + len(new)  # the late-arrival hours behind the newest, and the new
    assert sum(listed) <= window + report.copies  # (the local COPY lists its ledger file: one key per load)
    assert warehouse.rows_read <= window
    assert report.listed_objects <= window
    # And an empty cycle after it reads no more than that either
    assert loader.run().listed_objects <= window


def rows_count(warehouse: Any) -> int:
    return int(warehouse.query("SELECT COUNT(*) FROM readings")[0][0])


def test_late_objects_load_within_the_late_arrival_window_and_by_backfill_beyond_it(s3: Any, tmp_path: Path) -> None:
    stage_hours(s3, range(-5, 1))
    loader = loader_for(s3, tmp_path, clock=lambda: NOW)
    assert loader.run().loaded_objects == 12
    # An object of an hour ago arriving now (a stager retry, a replica's replication lag) still loads
    late = put(s3, key_at(NOW - HOUR, "late"), line("late", 1))
    assert [o.url for o in loader.pending()] == [late] and loader.run().loaded_objects == 1
    # One older than the late-arrival window is not listed by the schedule: a backfill of its prefix loads it
    stray = put(s3, key_at(NOW - LATE_ARRIVAL_S - 2 * HOUR, "stray"), line("stray", 1))
    assert loader.run().loaded_objects == 0
    day = stray.removeprefix("s3://staging/").rsplit("/", 2)[0] + "/"
    backfill = loader.run(day)
    assert backfill.loaded_objects == 1 and rows_count(loader.warehouse) == 14


def test_each_origin_keeps_its_own_watermark_so_late_replicas_still_load(s3: Any, tmp_path: Path) -> None:
    """The other region's objects arrive by S3 replication, hours late in an outage, in their own hours: a single
    watermark taken from this region's newest hour would skip them."""
    stage_hours(s3, range(-3, 1), origin="us-east-1")
    stage_hours(s3, [-6], origin="eu-west-1")
    loader = loader_for(s3, tmp_path, clock=lambda: NOW)
    assert loader.run().loaded_objects == 10
    replicas = stage_hours(s3, [-5], origin="eu-west-1")  # replicated five hours late
    report = loader.run()
    assert report.loaded_objects == len(replicas) == 2 and rows_count(loader.warehouse) == 12


def test_the_watermark_waits_for_objects_left_pending(s3: Any, tmp_path: Path) -> None:
    # Given a day-old backlog the warehouse cannot take yet (paused)
    backlog = stage_hours(s3, range(-30, -20))
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", s3)
    clock = [NOW]
    deferred = Loader(s3, Paused(warehouse, 1), US, "staging", clock=lambda: clock[0]).run()
    assert deferred.deferred and deferred.loaded_objects == 0
    # When the warehouse is back three days later
    clock[0] += 3 * 24 * HOUR
    report = Loader(s3, warehouse, US, "staging", clock=lambda: clock[0]).run()
    # Then the backlog still loads: the watermark never passed an object left pending
    assert report.loaded_objects == len(backlog) and rows_count(warehouse) == 20


# --- every statement of a cycle stays far inside the Data API's 100 KB ------------------------------------------


def test_no_statement_of_a_cycle_comes_near_the_data_api_limit(s3: Any, tmp_path: Path) -> None:
    """A 500-object manifest made a 100-119 KB ledger INSERT (fixed by COPYing the keys from a file). Here every
    statement and query a whole cycle sends (listing, ledger window, loads, halving, watermarks) is measured."""
    keys = [key_at(NOW - (i % 3) * HOUR, f"shardId-000000000003-{4965 * 10**40 + i:056d}-{i:056d}") for i in range(500)]
    for i, key in enumerate(keys):
        put(s3, key, line("d", i) if i != 250 else b'{"device_id": "d", "ts": "yesterday", "seq": 1}\n')
    warehouse = Recording(DuckDBWarehouse(tmp_path / "wh.duckdb", s3))
    report = Loader(s3, warehouse, US, "staging", clock=lambda: NOW).run()
    assert (report.manifests, report.loaded_objects, len(report.failed)) == (1, 499, 1)
    assert report.copies <= 1 + 2 * 9  # halving 500 objects: two loads a level, nine levels
    sizes = [len(sql.encode()) for sql in warehouse.sent]
    assert max(sizes) < redshift_rules.MAX_STATEMENT_BYTES // 50, max(sizes)  # 2 KB: a fiftieth of the limit
    assert all(redshift_rules.check_statement(sql) == [] for sql in warehouse.sent)


# --- schema creation is idempotent under concurrency -------------------------------------------------------------


def at_once(calls: Sequence[Any]) -> list[BaseException]:
    """Run the calls in threads released together; what they raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_loaders_creating_the_schema_at_once_all_succeed(tmp_path: Path) -> None:
    """CREATE TABLE IF NOT EXISTS run twice at once fails one of them (DuckDB: a catalog write-write conflict;
    Redshift and PostgreSQL: a duplicate in the catalog): two loaders starting together failed 9 times in 10."""
    for attempt in range(5):
        path = tmp_path / f"wh-{attempt}.duckdb"
        loaders = [Loader(None, DuckDBWarehouse(path, None), US, "staging") for _ in range(3)]
        assert at_once([ld.ensure_schema for ld in loaders]) == []
        tables = DuckDBWarehouse(path, None).query("SELECT table_name FROM information_schema.tables ORDER BY 1")
        assert [t for (t,) in tables] == ["load_ledger", "load_watermark", "loaded_objects", "readings"]


# --- numbers keep the digits they were stored with ---------------------------------------------------------------

DIGITS = "12345678901234567890.123456789"  # 29 digits: a double keeps about 15-17


def test_numbers_keep_their_staged_digits_in_the_warehouse(s3: Any, tmp_path: Path) -> None:
    """DuckDB's JSON reader parsed a number with a fraction as a DOUBLE: 12345678901234567890.123456789 came back
    as 12345678901234567000.0. Redshift keeps it as a DECIMAL in SUPER (docs/warehouse-sql.md)."""
    put(
        s3,
        key_at(NOW, "exact"),
        line("p", 1, metrics=f'{{"v":{DIGITS},"tiny":1E-7,"i":123456789012345678901234567890}}'),
    )
    loader = loader_for(s3, tmp_path)
    assert loader.run().loaded_objects == 1
    ((metrics,),) = loader.warehouse.query("SELECT metrics FROM readings")
    assert json.loads(metrics, parse_float=Decimal) == {
        "v": Decimal(DIGITS),
        "tiny": Decimal("1E-7"),
        "i": 123456789012345678901234567890,
    }


def test_a_stored_29_digit_decimal_reaches_the_warehouse_digit_for_digit(s3: Any, tmp_path: Path) -> None:
    """End to end from the table's stream: the stager decoded numbers as floats (rounded before staging), and the
    local COPY parsed them as doubles. The stager's half is devicepipe.streams/staging's (exact numbers)."""
    record = dynamodb_record("INSERT", table_item(reading("p", "b", 1_793_610_000_000, 1)), sequence_number=1)
    record["dynamodb"]["NewImage"]["metrics"] = {"M": {"v": {"N": DIGITS}, "n": {"N": "7"}}}  # as DynamoDB stored it
    Stager(s3, "staging", "us-east-1", Retrier()).stage(list(changes([record])))
    loader = loader_for(s3, tmp_path)
    assert loader.run().loaded_objects == 1
    ((metrics,),) = loader.warehouse.query("SELECT metrics FROM readings")
    assert json.loads(metrics, parse_float=Decimal) == {"v": Decimal(DIGITS), "n": 7}


def test_devicepipe_loads_shows_a_quarantined_object_and_reloads_it_once_fixed(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stage_batches(s3, 1)
    key = put(s3, "readings/origin=us-east-1/dt=2026-11-02/hour=09/7-bad.jsonl.gz", body=b"not gzip")
    key = key.removeprefix("s3://staging/")
    loader = loader_for(s3, tmp_path)
    loader.run()
    monkeypatch.setattr(stack, "read_state", lambda _: {})
    monkeypatch.setattr(loader_worker, "build_loader", lambda *_, **__: loader)

    def loads(*args: str) -> tuple[int, str]:
        code = cli.main(["loads", *args, "--local", "--state-dir", str(tmp_path)])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, out = loads("list")
    assert code == cli.EXIT_OK and "quarantined: 1 object " in out and key in out and "not gzip" in out
    code, out = loads("errors", key)
    assert code == cli.EXIT_OK and "line 0" in out and "not gzip" in out
    assert loads("reload", key)[0] == cli.EXIT_FAILED  # not fixed yet: it stays quarantined
    put(s3, key, line("fixed", 1))
    assert loads("reload", key) == (cli.EXIT_OK, f"{key} loaded\n")
    code, out = loads("list")
    assert "quarantined: 0 objects" in out and "pending: 0 staged objects" in out


class DenyingS3:
    """The loader's S3 client, answering GetObject of some keys with an error code (the warehouse reads the
    objects with a client of its own, as Redshift does with its copy role)."""

    def __init__(self, s3: Any, deny: dict[str, str]) -> None:
        self.s3, self.deny = s3, deny

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def get_object(self, **kw: Any) -> Any:
        if code := self.deny.get(kw["Key"]):
            raise ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")
        return self.s3.get_object(**kw)


def test_an_object_the_loader_may_not_read_is_copied_alone_not_quarantined(s3: Any, tmp_path: Path) -> None:
    """Review of issue 16's joining: an S3 error while joining escaped the cycle and stopped every load behind it.
    A denied read says nothing of the data (a missing permission denies every object alike): nothing is
    quarantined for it; halving ends in a COPY of the object alone, which the warehouse reads with its own role."""
    expected = stage_batches(s3, 6)
    denied = sorted(o.key for o in Loader(s3, None, US, "staging").staged())[2]  # type: ignore[arg-type]
    loader = Loader(DenyingS3(s3, {denied: "AccessDenied"}), DuckDBWarehouse(tmp_path / "wh.duckdb", s3), US, "staging")
    report = loader.run()
    assert (report.loaded_objects, report.failed, report.deferred) == (6, [], "")
    assert len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]


def test_a_transient_s3_error_while_joining_defers_the_cycle(s3: Any, tmp_path: Path) -> None:
    expected = stage_batches(s3, 4)
    key = sorted(o.key for o in Loader(s3, None, US, "staging").staged())[0]  # type: ignore[arg-type]
    flaky = DenyingS3(s3, {key: "SlowDown"})
    loader = Loader(flaky, DuckDBWarehouse(tmp_path / "wh.duckdb", s3), US, "staging")
    report = loader.run()
    assert report.loaded_objects == 0 and "SlowDown" in report.deferred and not report.failed
    flaky.deny.clear()
    assert loader.run().loaded_objects == 4 and len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]


def test_an_object_of_a_files_size_is_copied_as_it_is(s3: Any, tmp_path: Path) -> None:
    """Joining it gains nothing, and a large hand-made object would be decompressed whole in the function."""
    stage_batches(s3, 5)
    staged = Loader(s3, None, US, "staging").staged()  # type: ignore[arg-type]
    largest = max(staged, key=lambda o: o.size)
    loader = loader_for(s3, tmp_path, sizing=Sizing(min_file_bytes=largest.size, slices=1))
    files = loader.copy_files(loader.plan(staged)[0])
    assert largest.url in [f.url for f in files]
    assert sorted(o.url for f in files for o in f.objects) == sorted(o.url for o in staged)


def test_a_join_that_would_outlast_the_invocation_waits_for_the_next_cycle(s3: Any, tmp_path: Path) -> None:
    stage_batches(s3, 4)
    loader = loader_for(s3, tmp_path, deadline=Deadline(lambda: 0, 0))
    report = loader.run()
    assert report.loaded_objects == 0 and "no time left to join" in report.deferred
    # without joining there is nothing to fit: the COPY's own deadline is the warehouse adapter's
    (tmp_path / "unjoined").mkdir()
    unjoined = loader_for(s3, tmp_path / "unjoined", sizing=Sizing(0), deadline=Deadline(lambda: 0, 0))
    assert unjoined.run().loaded_objects == 4
