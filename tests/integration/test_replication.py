"""The local stack's global-table replication, in-process on moto: the rules DynamoDB global tables follow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devicepipe.dynamo import LATEST_CONDITION
from devicepipe.repair import regressions
from devicepipe_tools.events import dynamodb_record, reading, table_item
from devicepipe_tools.local import moto_fixes
from devicepipe_tools.local.esm import DynamoDBStreamSource, read_all
from devicepipe_tools.local.replication import Replicator
from devicepipe_tools.template import create_table_kwargs
from tests.integration.stack_helpers import wait_for

pytestmark = pytest.mark.integration
US, EU = "us-east-1", "eu-west-1"
TABLE = "readings"
DELAY_S = 0.15


@pytest.fixture
def regions(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Both regions' tables on moto with a replicator between them; ``replicator`` and per-region clients."""
    with mock_aws():
        moto_fixes.apply()
        replicator = Replicator([US, EU], [TABLE], delay_s=DELAY_S)
        replicator.install()
        out: dict[str, Any] = {"replicator": replicator}
        for region in (US, EU):
            ddb = boto3.client("dynamodb", region_name=region)
            table = ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))["TableDescription"]
            out[region] = ddb
            out[f"{region}/stream"] = (boto3.client("dynamodbstreams", region_name=region), table["LatestStreamArn"])
        try:
            yield out
        finally:
            replicator.uninstall()


def item(doc: dict[str, Any], region: str, latest: bool = False) -> dict[str, Any]:
    image: dict[str, Any] = dynamodb_record("INSERT", table_item(doc, region, latest=latest), sequence_number=0)[
        "dynamodb"
    ]["NewImage"]
    return image


def get(client: Any, pk: str, sk: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = client.get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": sk}}).get("Item")
    return found


def stream_records(regions: dict[str, Any], region: str) -> list[dict[str, Any]]:
    client, arn = regions[f"{region}/stream"]
    return [record.event for record in read_all(DynamoDBStreamSource(client, arn, region))]


def test_a_write_reaches_the_other_region_after_the_delay_and_its_stream_once(regions: dict[str, Any]) -> None:
    doc = reading("d1", "b1", 1_793_610_000_000, 1)
    written = item(doc, US)
    regions[US].put_item(TableName=TABLE, Item=written)
    assert get(regions[EU], "DEVICE#d1", written["sk"]["S"]) is None  # asynchronous: not there at once
    wait_for(lambda: get(regions[EU], "DEVICE#d1", written["sk"]["S"]) is not None, timeout_s=5)
    assert get(regions[EU], "DEVICE#d1", written["sk"]["S"]) == written
    time.sleep(DELAY_S * 3)  # a replicated write is not sent back: one write, one replication, one record each
    assert regions["replicator"].snapshot()["replicated"] == 1
    assert [r["eventName"] for r in stream_records(regions, EU)] == ["INSERT"]
    assert [r["eventName"] for r in stream_records(regions, US)] == ["INSERT"]
    lag = regions["replicator"].snapshot()["lag_ms"]
    assert lag["p50"] >= DELAY_S * 1000


def test_concurrent_writes_of_one_item_converge_on_the_last_writer(regions: dict[str, Any]) -> None:
    doc = reading("d2", "b1", 1_793_610_000_000, 1)
    first, last = item(doc, US), item(doc, EU)  # same key, other origin
    regions[US].put_item(TableName=TABLE, Item=first)
    regions[EU].put_item(TableName=TABLE, Item=last)  # later, within the replication delay
    key = ("DEVICE#d2", first["sk"]["S"])
    wait_for(lambda: regions["replicator"].snapshot()["pending"] == 0 and get(regions[US], *key) == last, 5)
    assert get(regions[EU], *key) == last
    assert regions["replicator"].snapshot()["superseded"] == 1  # US's write reached EU after EU's own


def test_deletes_replicate_and_an_older_write_does_not_resurrect_the_item(regions: dict[str, Any]) -> None:
    written = item(reading("d3", "b1", 1_793_610_000_000, 1), US)
    key = {"pk": written["pk"], "sk": written["sk"]}
    regions[US].put_item(TableName=TABLE, Item=written)
    wait_for(lambda: get(regions[EU], written["pk"]["S"], written["sk"]["S"]) is not None, 5)
    regions[EU].delete_item(TableName=TABLE, Key=key)
    wait_for(lambda: get(regions[US], written["pk"]["S"], written["sk"]["S"]) is None, 5)
    assert [r["eventName"] for r in stream_records(regions, US)] == ["INSERT", "REMOVE"]


def test_the_latest_condition_holds_per_region_only_so_lww_can_move_latest_back_and_the_stream_shows_it(
    regions: dict[str, Any],
) -> None:
    newer, older = reading("d4", "b1", 1_793_610_005_000, 2), reading("d4", "b1", 1_793_610_000_000, 1)
    # us-east-1 stores the newer reading's LATEST; eu-west-1, not having seen it yet, the older one, later.
    for region, doc in ((US, newer), (EU, older)):
        latest = item(doc, region, latest=True)
        regions[region].put_item(
            TableName=TABLE,
            Item=latest,
            ConditionExpression=LATEST_CONDITION,
            ExpressionAttributeValues={":version": latest["latest_at"]},
        )
    wait_for(lambda: regions["replicator"].snapshot()["pending"] == 0 and regions["replicator"].stats.replicated, 5)
    # Last writer wins: both regions now hold the OLDER reading (what DynamoDB does too) ...
    for region in (US, EU):
        assert get(regions[region], "DEVICE#d4", "LATEST")["latest_at"] == item(older, EU, latest=True)["latest_at"]  # type: ignore[index]
    # ... and us-east-1's stream shows the regression that CacheUpdaterFunction's LATEST repair undoes.
    (found,) = regressions(stream_records(regions, US))
    assert found.version == item(newer, US, latest=True)["latest_at"]["S"]
    assert regressions(stream_records(regions, EU)) == []


def test_a_region_that_is_down_receives_what_it_missed_when_it_is_back(regions: dict[str, Any]) -> None:
    written = item(reading("d5", "b1", 1_793_610_000_000, 1), US)
    regions["replicator"].set_down([EU])
    regions[US].put_item(TableName=TABLE, Item=written)
    time.sleep(DELAY_S * 3)
    assert regions["replicator"].snapshot()["held_for_down_regions"] == 1
    assert get(regions[EU], "DEVICE#d5", written["sk"]["S"]) is None
    regions["replicator"].set_down([])
    wait_for(lambda: get(regions[EU], "DEVICE#d5", written["sk"]["S"]) == written, 5)
