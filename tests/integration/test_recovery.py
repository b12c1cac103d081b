"""The recovery runbook's steps the local stack can exercise (docs/recovery.md), on one two-region stack:
evacuating the primary region (producers and readers to eu-west-1, staging and the warehouse catching up when it
is back), rebuilding a lost Redis cache from the table, and restoring the warehouse (or one day) from staging."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devicepipe.cache import CacheReader, CacheWriter
from devicepipe.loader import Loader, Source
from devicepipe_tools import cli
from devicepipe_tools.cache_rebuild import local_targets, rebuild, seed_latest
from devicepipe_tools.events import reading
from devicepipe_tools.local import stack
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.loader_worker import build_loader
from tests.integration.stack_helpers import regions_stack, stored_readings, wait_for

pytestmark = pytest.mark.integration
US, EU = "us-east-1", "eu-west-1"
READINGS = 240  # sent while us-east-1 is down
DEVICES = 6


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("recovery")
    with regions_stack(state_dir, (US, EU), ("dynamodb", "s3")) as running:
        yield running


def table(both: dict[str, Any]) -> str:
    name: str = both[US]["res"].names["ReadingsTable"]
    return name


def warehouse_rows(warehouse: Any, prefix: str) -> int:
    return int(warehouse.query(f"SELECT COUNT(*) FROM readings WHERE device_id LIKE '{prefix}%'")[0][0])


def staged_keys(both: dict[str, Any], region: str, prefix: str) -> list[str]:
    s3, bucket = both[region]["s3"], both[region]["res"].names["StagingBucket"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_evacuating_the_primary_region_producers_and_readers_move_and_nothing_is_lost(
    both: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = str(both["state_dir"])
    docs = [reading(f"ev-{i % DEVICES:02d}", "ev-branch", 1_793_610_000_000 + i * 1000, i) for i in range(READINGS)]
    lines = tmp_path / "readings.jsonl"
    lines.write_text("".join(json.dumps(d) + "\n" for d in docs))
    # Given us-east-1 (the primary: warehouse, loader) down
    stack.set_region_down(both["state_dir"], US, True)
    try:
        # When the producers, configured with both regions, keep sending
        code = cli.main(
            [
                "produce", "--local", "--regions", f"{US},{EU}", "--file", str(lines), "--failover-after", "1",
                "--state-dir", state_dir, "--failed-file", str(tmp_path / "failed.jsonl"),
            ]
        )  # fmt: skip
        assert code == cli.EXIT_OK
        # Then eu-west-1 stores every reading, and branches reading eu-west-1's API see the newest ones
        wait_for(lambda: len(stored_readings(both[EU]["dynamodb"], table(both), "ev-")) >= READINGS, 90)
        capsys.readouterr()

        def newest_served() -> bool:
            cli.main(["read", "latest", "ev-05", "--local", "--region", EU, "--json", "--state-dir", state_dir])
            out = capsys.readouterr().out
            return out.startswith("{") and json.loads(out)["reading"]["seq"] == READINGS - 1

        wait_for(newest_served, 30)
        # And eu-west-1 staged them in its own bucket, waiting for replication into the primary's
        wait_for(
            lambda: bool(staged_keys(both, EU, f"readings/origin={EU}/")), 90
        )  # the stager batches for up to 30 s (template)
        assert warehouse_rows(build_loader(both["state"], both["state_dir"]).warehouse, "ev-") == 0
    finally:
        # When us-east-1 comes back
        stack.set_region_down(both["state_dir"], US, False)
    # Then replication brings every reading to it, and the warehouse loads each once
    wait_for(lambda: len(stored_readings(both[US]["dynamodb"], table(both), "ev-")) >= READINGS, 90)
    warehouse = build_loader(both["state"], both["state_dir"]).warehouse
    wait_for(lambda: warehouse_rows(warehouse, "ev-") >= READINGS, 90)
    assert warehouse_rows(warehouse, "ev-") == READINGS
    assert stored_readings(both[US]["dynamodb"], table(both), "ev-") == stored_readings(
        both[EU]["dynamodb"], table(both), "ev-"
    )


def test_a_lost_cache_is_rebuilt_from_the_table(both: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # Given 1,000 devices' LATEST items in eu-west-1's table (written directly) and its Redis emptied
    target = local_targets(both["state"], [EU])[0]
    items = seed_latest(target.dynamodb, target.table, 1000, 20, prefix="rc", origin_region=EU)
    both[EU]["redis"].flushdb()
    # When the operator rebuilds it
    code = cli.main(["cache", "rebuild", "--local", "--region", EU, "--json", "--state-dir", str(both["state_dir"])])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK, out
    report = json.loads(out[out.index("[") :])[0]
    # Then every device's newest reading is cached, and branch views are served from the cache again
    assert report["devices"] >= 1000 and report["written"] + report["kept"] == report["devices"]
    writer = CacheWriter(both[EU]["redis"])
    for item in items:
        assert both[EU]["redis"].hget(writer.device_key(item["device_id"]), "version") == item["latest_at"]
    view = CacheReader(writer).branch("rc-branch-007")
    assert view is not None and len(view) == 50
    state_dir = str(both["state_dir"])
    cli.main(["read", "branch", "rc-branch-007", "--local", "--region", EU, "--json", "--state-dir", state_dir])
    assert json.loads(capsys.readouterr().out)["source"] == "cache"
    # And a second run changes nothing
    again = rebuild(target)
    assert again.written == 0 and again.kept == again.devices
    print(f"\nrebuild of {report['devices']} devices: {report['seconds']} s")


def test_the_warehouse_is_restored_from_staging_whole_or_one_day(both: dict[str, Any], tmp_path: Path) -> None:
    # Given everything staged so far loaded by the stack's loader
    live = build_loader(both["state"], both["state_dir"])
    wait_for(lambda: not live.pending(), 90)
    expected = int(live.warehouse.query("SELECT COUNT(*) FROM readings")[0][0])
    assert expected >= READINGS
    # When the warehouse is lost and a new one loads the staging bucket (what a backfill of readings/ does)
    s3, bucket = both[US]["s3"], both[US]["res"].names["StagingBucket"]
    restored = Loader(s3, DuckDBWarehouse(tmp_path / "restored.duckdb", s3), Source(bucket, US), bucket, region=US)
    report = restored.run("readings/")
    # Then it holds every reading once, as the old one did
    assert report.failed == [] and report.loaded_objects == len(live.staged())
    assert int(restored.warehouse.query("SELECT COUNT(*) FROM readings")[0][0]) == expected
    # When one day's rows of eu-west-1 are lost, a backfill of that day's prefix loads nothing: the ledger still
    # says its objects are loaded
    day = staged_keys(both, US, f"readings/origin={EU}/")[0].split("/")[2]
    prefix = f"readings/origin={EU}/{day}/"
    restored.warehouse.execute([f"DELETE FROM readings WHERE origin_region = '{EU}'"])
    assert restored.run(prefix).loaded_objects == 0
    # Then once the ledger forgets that day's objects, the backfill loads them again, and only them
    restored.warehouse.execute([f"DELETE FROM loaded_objects WHERE object_key LIKE 's3://{bucket}/{prefix}%'"])
    again = restored.run(prefix)
    assert again.loaded_objects == len(staged_keys(both, US, prefix)) and again.failed == []
    assert int(restored.warehouse.query("SELECT COUNT(*) FROM readings")[0][0]) == expected
    assert restored.run(prefix).loaded_objects == 0
