"""LATEST regressions from cross-region last-writer-wins: found in the stream, written back under the condition."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devicepipe.dynamo import DynamoWriter
from devicepipe.repair import regressions, repair
from devicepipe.retry import Backoff, Retrier
from devicepipe_tools.events import altered, dynamodb_record, reading, table_item, undecodable_records
from devicepipe_tools.fakes import FakeDynamo, FaultyDynamo

US, EU = "us-east-1", "eu-west-1"
NEWER = reading("d1", "b1", 1_793_610_005_000, 2)
OLDER = reading("d1", "b1", 1_793_610_000_000, 1)
NEWEST = reading("d1", "b1", 1_793_610_009_000, 3)


def latest(doc: dict[str, Any], region: str = US) -> dict[str, Any]:
    return table_item(doc, origin_region=region, latest=True)


def modify(new: dict[str, Any], old: dict[str, Any], seq: int) -> dict[str, Any]:
    return dynamodb_record("MODIFY", new, old=old, sequence_number=seq)


def wire(item: dict[str, Any]) -> dict[str, Any]:
    image: dict[str, Any] = dynamodb_record("INSERT", item, sequence_number=0)["dynamodb"]["NewImage"]
    return image


def writer(client: Any) -> DynamoWriter:
    retrier = Retrier(Backoff(base_s=0.001, cap_s=0.001, max_attempts=3), sleep=lambda _: None)
    return DynamoWriter(client, "t", ThreadPoolExecutor(4), retrier, 4)


def test_a_latest_moved_back_is_a_regression_and_a_forward_move_is_not() -> None:
    records = [modify(latest(OLDER, EU), latest(NEWER), 1), modify(latest(NEWEST), latest(NEWER), 2)]
    found = regressions(records)
    assert [(r.device_id, r.version, r.sequence_number) for r in found] == [("d1", latest(NEWER)["latest_at"], "1")]
    assert found[0].restore["origin_region"] == {"S": US}  # the lost image exactly, not a rebuilt one


@pytest.mark.parametrize(
    "record",
    [
        dynamodb_record("INSERT", latest(OLDER), sequence_number=1),
        dynamodb_record("REMOVE", latest(NEWER), sequence_number=1),
        modify(table_item(OLDER), table_item(NEWER), 1),  # reading items have no LATEST to restore
        modify(latest(NEWER, EU), latest(NEWER), 1),  # same reading, other region's write: not older
    ],
    ids=["insert", "remove", "reading-item", "same-version"],
)
def test_other_changes_are_not_regressions(record: dict[str, Any]) -> None:
    assert regressions([record]) == []


def test_of_several_regressions_of_one_device_the_newest_lost_image_is_restored() -> None:
    records = [
        modify(latest(OLDER, EU), latest(NEWER), 1),
        modify(latest(OLDER, EU), latest(NEWEST), 2),
    ]
    (found,) = regressions(records)
    assert (found.version, found.sequence_number) == (latest(NEWEST)["latest_at"], "2")


def test_repair_writes_the_newer_image_back_over_the_regressed_item() -> None:
    dynamo = FakeDynamo()
    regressed = wire(latest(OLDER, EU))
    dynamo.items[(regressed["pk"]["S"], "LATEST")] = regressed
    result = repair(writer(dynamo), [modify(latest(OLDER, EU), latest(NEWER), 7)])
    assert (result.regressions, result.repaired, result.already_newer, result.failed) == (1, 1, 0, [])
    assert dynamo.items[("DEVICE#d1", "LATEST")]["latest_at"] == {"S": latest(NEWER)["latest_at"]}
    assert dynamo.items[("DEVICE#d1", "LATEST")]["origin_region"] == {"S": US}


def test_repair_changes_nothing_when_a_newer_reading_is_already_there() -> None:
    dynamo = FakeDynamo()
    dynamo.items[("DEVICE#d1", "LATEST")] = wire(latest(NEWEST, EU))
    result = repair(writer(dynamo), [modify(latest(OLDER, EU), latest(NEWER), 7)])
    assert (result.repaired, result.already_newer, result.failed) == (0, 1, [])
    assert dynamo.items[("DEVICE#d1", "LATEST")]["latest_at"] == {"S": latest(NEWEST)["latest_at"]}


def test_a_repair_that_keeps_failing_names_its_record_for_retry() -> None:
    throttled = FaultyDynamo(FakeDynamo(), throttled_calls=100)
    result = repair(writer(throttled), [modify(latest(OLDER, EU), latest(NEWER), 7)])
    assert (result.repaired, result.failed) == (0, ["7"])


def test_a_batch_without_regressions_makes_no_call() -> None:
    dynamo = FakeDynamo()
    result = repair(writer(dynamo), [modify(latest(NEWEST), latest(NEWER), 1)])
    assert (result.regressions, result.failed, sum(dynamo.calls.values())) == (0, [], 0)


def test_records_that_do_not_decode_are_passed_over_and_the_batch_is_searched_on() -> None:
    """The repair decodes records as the cache and the stager do (devicepipe.streams); the records it cannot
    decode are the cache updater's to quarantine, never a crash that stops the repair of the others."""
    broken = modify(latest(OLDER, EU), latest(NEWER), 2)
    broken["dynamodb"]["OldImage"]["latest_at"] = {"B": "AAE="}
    records = [*undecodable_records(10).values(), broken, modify(latest(OLDER, EU), latest(NEWER), 3)]
    assert [r.sequence_number for r in regressions(records)] == ["3"]


def test_a_latest_change_without_a_device_id_is_no_regression() -> None:
    record = altered(modify(latest(OLDER, EU), latest(NEWER), 1), device_id=None)
    del record["dynamodb"]["OldImage"]["device_id"]
    assert regressions([record]) == []
