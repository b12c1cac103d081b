"""The loader against moto S3 (objects written by the real stager) and the DuckDB warehouse."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devicepipe.loader import Loader, Source
from devicepipe.retry import Deadline, Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe.warehouse import LoadFailed, RedshiftDataApi
from devicepipe_tools.events import insert_batch
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
    assert failed["objects"] == [f"s3://staging/{key}"]
    (error,) = failed["errors"]
    assert (error["file"], error["line"]) == (f"s3://staging/{key}", 2) and "invalid JSON" in error["reason"]
    assert report.loaded_objects == 3 and len(rows(loader.warehouse)) == expected  # type: ignore[arg-type]
    # The quarantined manifest stays out of later cycles
    assert loader.run().pending_objects == 0
    assert [d["manifest"] for d in loader.failed_manifests()] == [failed["manifest"]]


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


def test_reload_takes_a_manifest_out_of_quarantine(s3: Any, tmp_path: Path) -> None:
    key = "readings/origin=us-east-1/dt=2026-11-02/hour=09/0001-fixable.jsonl.gz"
    s3.put_object(Bucket="staging", Key=key, Body=b"not gzip")
    loader = loader_for(s3, tmp_path)
    (failed,) = loader.run().failed
    name = failed["manifest"].rsplit("/", 1)[1]
    # The operator fixes the object, then reloads
    line = b'{"device_id":"f","branch_id":"b","ts":"2026-11-02T09:00:00.000000Z","seq":1,"metrics":{},"extra":{}}\n'
    s3.put_object(Bucket="staging", Key=key, Body=gzip.compress(line))
    loader.reload(name)
    assert rows(loader.warehouse) == [("f", rows(loader.warehouse)[0][1], 1)]  # type: ignore[arg-type]
    assert loader.failed_manifests() == []


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
