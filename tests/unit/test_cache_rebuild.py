"""`devicepipe cache rebuild`: the table's LATEST items back into Redis (moto and fakeredis in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import fakeredis
import pytest
import redis
from moto import mock_aws

from devicepipe.cache import CacheReader, CacheWriter, update_from_item
from devicepipe.reads import Reads
from devicepipe_tools import cli
from devicepipe_tools.cache_rebuild import RebuildError, Target, rebuild, seed_latest
from devicepipe_tools.events import reading, table_item
from devicepipe_tools.template import create_table_kwargs

TABLE = "readings"


@pytest.fixture
def target(template: dict[str, Any]) -> Iterator[Target]:
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))
        yield Target("us-east-1", TABLE, ddb, fakeredis.FakeRedis(), "fakeredis")


def cached(target: Target) -> dict[str, str]:
    writer = CacheWriter(target.redis)
    return {
        key.decode().rsplit(":", 1)[1]: target.redis.hget(key, "version").decode()
        for key in target.redis.scan_iter(writer.device_key("*"))
    }


def test_every_devices_latest_is_cached_and_every_branch_view_marked_loaded(target: Target) -> None:
    # Given 1,203 devices in 7 branches in the table and an empty cache (a failover emptied it)
    items = seed_latest(target.dynamodb, TABLE, 1203, 7)
    progress: list[int] = []
    # When the cache is rebuilt in pipelines of 100
    report = rebuild(target, batch=100, progress=lambda r: progress.append(r.devices))
    # Then every device's LATEST reading is cached, and the branch list and every branch view are trusted again
    assert cached(target) == {i["device_id"]: i["latest_at"] for i in items}
    assert (report.devices, report.written, report.kept, report.expired, report.branches) == (1203, 1203, 0, 0, 7)
    assert progress == list(range(100, 1201, 100))
    reader = CacheReader(CacheWriter(target.redis))
    listing = reader.branches()
    assert listing is not None and sorted(b for b, _, _ in listing) == [f"rb-branch-{i:03d}" for i in range(7)]
    assert sum(n for _, _, n in listing) == 1203
    view = reader.branch("rb-branch-003")
    assert view is not None and {d for d, _ in view} == {i["device_id"] for i in items[3::7]}
    # And a read of a branch is a cache hit, answered without the table
    lookups: list[tuple[str, str]] = []
    reads = Reads(CacheWriter(target.redis), target.dynamodb, TABLE, on_lookup=lambda k, o: lookups.append((k, o)))
    assert reads.branch_devices("rb-branch-003", 1000).source == "cache"
    assert lookups == [("branch", "hit"), ("devices", "hit")]


def test_a_rebuild_never_replaces_what_the_cache_updater_wrote_meanwhile(target: Target) -> None:
    # Given devices in the table, and the cache updater having cached a newer reading of one of them, in another
    # branch (it moved), while the table's LATEST still lags behind (replication)
    items = seed_latest(target.dynamodb, TABLE, 20, 2, base_ms=1_793_600_000_000)
    moved = items[4]
    newer = table_item(reading(moved["device_id"], "br-new", 1_793_700_000_000, 9), latest=True)
    writer = CacheWriter(target.redis)
    writer.apply([update_from_item(newer, str(newer["latest_at"]))])
    # When the cache is rebuilt
    report = rebuild(target, batch=7)
    # Then the newer reading stays, and the device is listed only in its new branch
    assert (report.written, report.kept) == (19, 1)
    assert cached(target)[moved["device_id"]] == newer["latest_at"]
    reader = CacheReader(writer)
    old_view = reader.branch(moved["branch_id"])
    assert old_view is not None and moved["device_id"] not in {d for d, _ in old_view}
    assert reader.branch("br-new") == [(moved["device_id"], 1_793_700_000_000)]


def test_a_second_rebuild_changes_nothing(target: Target) -> None:
    seed_latest(target.dynamodb, TABLE, 50, 3)
    rebuild(target)
    before = {k: target.redis.dump(k) for k in target.redis.scan_iter("dp:device:*")}
    again = rebuild(target)
    assert (again.devices, again.written, again.kept) == (50, 0, 50)
    assert {k: target.redis.dump(k) for k in target.redis.scan_iter("dp:device:*")} == before


def test_latest_items_past_their_ttl_are_skipped(target: Target) -> None:
    items = seed_latest(target.dynamodb, TABLE, 5, 1)
    report = rebuild(target, now_s=lambda: float(items[2]["expires_at"]))
    assert (report.devices, report.written, report.expired) == (5, 2, 3)


def test_an_empty_table_leaves_an_empty_branch_list_that_is_trusted(target: Target) -> None:
    report = rebuild(target)
    assert (report.devices, report.branches) == (0, 0)
    assert CacheReader(CacheWriter(target.redis)).branches() == []


def test_a_missing_table_or_index_and_a_dead_redis_are_one_clear_error(target: Target) -> None:
    with pytest.raises(RebuildError, match="no table nope"):
        rebuild(Target("us-east-1", "nope", target.dynamodb, target.redis, "fakeredis"))
    target.dynamodb.create_table(
        TableName="plain",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(RebuildError, match="has no index ByBranchLatest"):
        rebuild(Target("us-east-1", "plain", target.dynamodb, target.redis, "fakeredis"))
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(RebuildError, match=r"cannot reach Redis at 127\.0\.0\.1:1"):
        rebuild(Target("us-east-1", TABLE, target.dynamodb, dead, "127.0.0.1:1"))


def test_redis_failing_midway_says_how_far_it_got_and_to_run_again(target: Target) -> None:
    seed_latest(target.dynamodb, TABLE, 30, 2)

    class Failing(fakeredis.FakeRedis):
        pipelines = 0

        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            Failing.pipelines += 1
            if Failing.pipelines > 2:
                raise redis.exceptions.ConnectionError("connection reset")
            return super().pipeline(*args, **kwargs)

    with pytest.raises(RebuildError, match=r"failed after 10 devices: .*run it again"):
        rebuild(Target("us-east-1", TABLE, target.dynamodb, Failing(), "fakeredis"), batch=10)


def test_the_cli_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cache", "rebuild"]) == cli.EXIT_USAGE
    assert "needs --local, or --region" in capsys.readouterr().err


def test_the_report_line_names_every_figure(target: Target) -> None:
    seed_latest(target.dynamodb, TABLE, 3, 1)
    line = rebuild(target).line()
    for word in ("3 devices scanned", "3 written", "0 kept", "1 branch view marked", "devices/s"):
        assert word in line
