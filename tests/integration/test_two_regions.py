"""Both regions on the local stack, replicating: conflicts, LATEST repair, an outage, failover, the probe."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devicepipe.cache import CacheWriter
from devicepipe.dynamo import LATEST_CONDITION
from devicepipe_tools import cli
from devicepipe_tools.events import dynamodb_record, encode, reading, table_item
from devicepipe_tools.fakes import FaultyKinesis
from devicepipe_tools.local import stack
from devicepipe_tools.producer import Entry, Producer
from tests.integration.stack_helpers import regions_stack, stored_readings, wait_for

pytestmark = pytest.mark.integration
US, EU = "us-east-1", "eu-west-1"
DELAY_S = 3.0  # longer than a local ingest takes, so writes of both regions race within it


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("two-regions")
    services = ("kinesis", "dynamodb", "s3", "sqs")
    with regions_stack(state_dir, (US, EU), services, replication_delay_s=DELAY_S) as running:
        yield running


def table_name(both: dict[str, Any]) -> str:
    name: str = both[US]["res"].names["ReadingsTable"]
    return name


def items_of(both: dict[str, Any], region: str, prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = (
        both[region]["dynamodb"].get_paginator("scan").paginate(TableName=table_name(both)).build_full_result()["Items"]
    )
    return {(i["pk"]["S"], i["sk"]["S"]): i for i in items if i["pk"]["S"].startswith(f"DEVICE#{prefix}")}


def wait_settled(both: dict[str, Any], timeout_s: float = 90) -> None:
    """Settled twice, a second apart: a replicated write wakes the consumers up again."""

    def twice() -> bool:
        if not stack.settled(both["state_dir"]):
            return False
        time.sleep(1.0)
        return stack.settled(both["state_dir"])

    wait_for(twice, timeout_s)


def staged(both: dict[str, Any], region: str, prefix: str) -> Counter[tuple[str, str, int]]:
    """What ``region``'s stager staged: its own origin prefix (the primary's bucket also holds the other region's
    objects, replicated in for the warehouse: docs/warehouse-regions.md)."""
    s3, bucket = both[region]["s3"], both[region]["res"].names["StagingBucket"]
    counts: Counter[tuple[str, str, int]] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"readings/origin={region}/"):
        for obj in page.get("Contents", []):
            for line in gzip.decompress(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()).splitlines():
                row = json.loads(line)
                if row["device_id"].startswith(prefix):
                    counts[(row["device_id"], row["ts"], row["seq"])] += 1
    return counts


def cached_version(both: dict[str, Any], region: str, device: str) -> str | None:
    client = both[region]["redis"]
    version: str | None = client.hget(CacheWriter(client).device_key(device), "version")
    return version


def produce(both: dict[str, Any], region: str, docs: list[dict[str, Any]]) -> None:
    producer = Producer(both[region]["kinesis"], both[region]["res"].names["ReadingsStream"], lambda *_: None)
    progress = producer.send(Entry(encode(d), d["device_id"], [str(i)]) for i, d in enumerate(docs))
    assert (progress.sent, progress.failed) == (len(docs), 0)


def test_both_regions_writing_the_same_devices_converge_everywhere(both: dict[str, Any]) -> None:
    # Given ten devices that send their newer reading to us-east-1 and an older one to eu-west-1 (a moment
    # later, so eu-west-1's LATEST write is the later one), and one reading to both regions
    base = 1_793_700_000_000
    devices = [f"cf-{i:02d}" for i in range(10)]
    to_us = [reading(d, "cf-branch", base + 2_000, 3) for d in devices] + [
        reading(d, "cf-branch", base, 1) for d in devices
    ]
    to_eu = [reading(d, "cf-branch", base + 1_000, 2) for d in devices] + [
        reading(d, "cf-branch", base, 1) for d in devices
    ]
    # When both regions ingest at once, within the replication delay
    us = threading.Thread(target=produce, args=(both, US, to_us))
    us.start()
    time.sleep(0.3)
    produce(both, EU, to_eu)
    us.join()
    wait_for(lambda: len(items_of(both, US, "cf-")) == 40 and len(items_of(both, EU, "cf-")) == 40, 90)
    wait_settled(both)
    # Then both replicas hold the same items, LATEST at the newest reading in both
    us_items, eu_items = items_of(both, US, "cf-"), items_of(both, EU, "cf-")
    assert us_items == eu_items
    newest = table_item(reading("cf-00", "cf-branch", base + 2_000, 3), latest=True)["latest_at"]
    assert {i["latest_at"]["S"] for (_, sk), i in us_items.items() if sk == "LATEST"} == {newest}
    # And both regions' caches hold each device's newest reading
    for region in (US, EU):
        assert {cached_version(both, region, d) for d in devices} == {newest}, region
    # And each region staged exactly what it ingested itself, once; the replicated copies were not staged
    key = lambda doc: (doc["device_id"], table_item(doc)["ts"], doc["seq"])  # noqa: E731
    assert staged(both, US, "cf-") == Counter(map(key, to_us))
    assert staged(both, EU, "cf-") == Counter(map(key, to_eu))


def test_latest_moved_back_by_last_writer_wins_is_repaired_in_both_regions(both: dict[str, Any]) -> None:
    # Given us-east-1 storing the newer LATEST and eu-west-1 an older one just after, within the delay (each
    # write passes its own region's condition: neither region has seen the other's yet)
    newer = table_item(reading("lw-1", "lw-branch", 1_793_700_009_000, 9), origin_region=US, latest=True)
    older = table_item(reading("lw-1", "lw-branch", 1_793_700_001_000, 1), origin_region=EU, latest=True)
    for region, item in ((US, newer), (EU, older)):
        image = dynamodb_record("INSERT", item, sequence_number=0)["dynamodb"]["NewImage"]
        both[region]["dynamodb"].put_item(
            TableName=table_name(both),
            Item=image,
            ConditionExpression=LATEST_CONDITION,
            ExpressionAttributeValues={":version": image["latest_at"]},
        )
        time.sleep(0.1)

    def latest_in(region: str) -> str | None:
        found = items_of(both, region, "lw-").get(("DEVICE#lw-1", "LATEST"))
        return found["latest_at"]["S"] if found else None

    # When replication delivers eu-west-1's later write to us-east-1 (last writer wins: the older reading),
    # the LATEST repair in us-east-1's CacheUpdaterFunction (its mapping passes LATEST changes too) writes the
    # newer image back, and that write replicates to eu-west-1
    wait_for(lambda: latest_in(US) == latest_in(EU) == newer["latest_at"] and stack.settled(both["state_dir"]), 90)
    consumer = stack.mapping_stats(both["state_dir"])[f"{US}/CacheUpdaterEventSourceMapping"]
    assert consumer["records_done"] >= 1 and consumer["function_errors"] == 0
    # Then both regions keep the newest reading, with its own origin
    for region in (US, EU):
        assert items_of(both, region, "lw-")[("DEVICE#lw-1", "LATEST")]["origin_region"] == {"S": US}


def test_an_outage_of_one_region_loses_nothing_and_it_catches_up_when_back(
    both: dict[str, Any], tmp_path: Path
) -> None:
    # Given eu-west-1 down (503s, its functions stopped)
    stack.set_region_down(both["state_dir"], EU, True)
    try:
        # When a producer that prefers eu-west-1 keeps sending
        code = cli.main(
            [
                "produce", "--local", "--regions", f"{EU},{US}", "--simulate", "--count", "300", "--devices", "6",
                "--failover-after", "1", "--state-dir", str(both["state_dir"]), "--failed-file",
                str(tmp_path / "failed.jsonl"),
            ]
        )  # fmt: skip
        assert code == cli.EXIT_OK
        # Then us-east-1 stores every reading while eu-west-1 receives nothing yet
        wait_for(lambda: len(stored_readings(both[US]["dynamodb"], table_name(both), "dev-")) >= 300, 90)
        time.sleep(DELAY_S + 1)
        replication = stack.replication_stats(both["state_dir"])
        held = replication["held_for_down_regions"] if replication else 0
        assert held >= 300
    finally:
        stack.set_region_down(both["state_dir"], EU, False)
    # And once eu-west-1 is back, it holds every reading and its cache every device's newest
    wait_for(lambda: len(stored_readings(both[EU]["dynamodb"], table_name(both), "dev-")) >= 300, 90)
    wait_settled(both)
    assert items_of(both, EU, "dev-") == items_of(both, US, "dev-")
    latest = {
        i["device_id"]["S"]: i["latest_at"]["S"] for (_, sk), i in items_of(both, US, "dev-").items() if sk == "LATEST"
    }
    assert len(latest) == 6
    for device, version in latest.items():
        assert cached_version(both, EU, device) == version
    # And nothing was given up anywhere, nor staged by eu-west-1 (none of it was ingested there)
    for region in (US, EU):
        for queue in ("IngestFailureQueue", "CacheFailureQueue", "StagerFailureQueue"):
            attrs = both[region]["sqs"].get_queue_attributes(
                QueueUrl=both[region]["res"].names[queue], AttributeNames=["ApproximateNumberOfMessages"]
            )
            assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0", (region, queue)
    assert staged(both, EU, "dev-") == Counter()
    assert sum(staged(both, US, "dev-").values()) == 300


def test_readings_fail_over_to_the_healthy_region_none_lost_none_doubled(both: dict[str, Any]) -> None:
    # Given us-east-1's stream failing every put and eu-west-1 healthy
    broken = FaultyKinesis(both[US]["kinesis"], always_fail=True)
    producer = Producer(
        broken,
        both[US]["res"].names["ReadingsStream"],
        lambda *_: None,
        failover_after_s=0.2,
        fallbacks=[(both[EU]["kinesis"], both[EU]["res"].names["ReadingsStream"])],
    )
    docs = [reading(f"fo-{i % 11:02d}", "fo-branch", 1_793_610_000_000 + i, i) for i in range(900)]
    # When the producer sends
    progress = producer.send(Entry(encode(d), d["device_id"], [str(i)]) for i, d in enumerate(docs))
    # Then every reading went to eu-west-1, which stored each once, and replication brought each to us-east-1
    assert (progress.sent, progress.failed) == (900, 0) and progress.failed_over > 0

    def stored(region: str) -> set[str]:
        return stored_readings(both[region]["dynamodb"], table_name(both), "fo-")

    wait_for(lambda: len(stored(EU)) >= 900 and len(stored(US)) >= 900, 90)
    assert stored(EU) == stored(US) and len(stored(EU)) == 900


def test_the_probe_measures_the_configured_replication_delay(both: dict[str, Any], capsys: Any) -> None:
    code = cli.main(
        ["probe", "replication", "--local", "--count", "5", "--json", "--state-dir", str(both["state_dir"])]
    )
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK, out
    results = json.loads(out[out.index("[") :])
    assert [(r["source"], r["target"], r["seen"]) for r in results] == [(US, EU, 5), (EU, US, 5)]
    for r in results:
        assert DELAY_S * 1000 <= r["lag_ms"]["p50"] <= DELAY_S * 1000 + 1500
