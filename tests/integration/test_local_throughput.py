"""The demo's throughput figure: readings/s against the moto server's BatchWriteItem floor, in the same run."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from devicepipe_tools.local import moto_fixes
from devicepipe_tools.local.demo import throughput, throughput_line
from devicepipe_tools.local.floor import batch_write_floor, floor_items
from devicepipe_tools.local.net import free_port


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    stop, _ = moto_fixes.start_server(port, lambda app: app)
    yield f"http://127.0.0.1:{port}"
    stop()


def test_the_floor_writes_reading_items_into_a_scratch_table_it_removes(endpoint: str) -> None:
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    before = set(dynamodb.list_tables()["TableNames"])
    floor = batch_write_floor(endpoint, "us-east-1", items=200, rounds=2)
    assert floor["items"] == 200 and len(floor["seconds"]) == 2
    assert floor["items_per_s"] > 0
    assert set(dynamodb.list_tables()["TableNames"]) == before
    # the items are the ingest's: a reading's attributes and what the ingest adds
    item = floor_items(1)[0]
    assert {"pk", "sk", "device_id", "origin_region", "ingested_at", "expires_at"} <= set(item)


def test_throughput_runs_from_the_first_put_to_the_last_record_stored_and_cached() -> None:
    stats = {
        "us-east-1/IngestEventSourceMapping": {"last_done_at": 1005.0},
        "us-east-1/CacheUpdaterEventSourceMapping": {"last_done_at": 1010.0},
        "us-east-1/StagerEventSourceMapping": {"last_done_at": 1040.0},  # its batching window: not counted
    }
    t = throughput(stats, {"produced": 10_000, "produce_started_at": 1000.0}, floor_items_per_s=4000)
    assert t == {"readings_per_s": 1000, "seconds": 10.0, "floor_items_per_s": 4000, "ratio_to_floor": 0.25}
    assert throughput_line(t).split()[:3] == ["throughput", "1000", "readings/s"]
    assert "0.250x the moto server's BatchWriteItem floor of 4000 items/s" in throughput_line(t)
    assert "10.0 s, replication delay of 5 s included)" in throughput_line(t | {"replication_delay_s": 5.0})
