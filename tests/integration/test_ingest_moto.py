"""IngestFunction's handler against moto (table and bucket built from template.yaml)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devicepipe.config import IngestSettings
from devicepipe.ingest import build_ingestor
from devicepipe.models import unmarshal_item
from devicepipe.retry import Backoff, Retrier
from devicepipe_tools.events import encode, kinesis_event, reading
from devicepipe_tools.fakes import FaultyDynamo
from devicepipe_tools.template import ROOT, create_table_kwargs, parameter_default
from functions.ingest import app
from tests.conftest import FakeLambdaContext

pytestmark = pytest.mark.integration
BUCKET = "devicepipe-quarantine-test"


@pytest.fixture
def aws(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto with the template's table and a quarantine bucket; the handler's env pointing at them."""
    table = parameter_default(template, "TableName")
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", table))
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        monkeypatch.setenv("TABLE_NAME", table)
        monkeypatch.setenv("QUARANTINE_BUCKET", BUCKET)
        app._ingestor.cache_clear()
        yield {"ddb": ddb, "s3": s3, "table": table}
        app._ingestor.cache_clear()


def scan(aws: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    items = aws["ddb"].get_paginator("scan").paginate(TableName=aws["table"]).build_full_result()["Items"]
    return {(i["pk"]["S"], i["sk"]["S"]): unmarshal_item(i) for i in items}


def quarantined(aws: dict[str, Any]) -> list[dict[str, Any]]:
    listing = aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return [json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()) for o in listing]


def invoke(event: dict[str, Any], context: FakeLambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = app.lambda_handler(event, context)
    return response


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / "ingest" / name).read_text())
    return event


def test_clean_batch_is_stored_with_latest_per_device(aws: dict[str, Any], lambda_context: FakeLambdaContext) -> None:
    # Given the sample valid batch
    # When the handler runs
    response = invoke(sample("valid-batch.json"), lambda_context)
    # Then all four readings and three LATEST items are in the table
    assert response == {"batchItemFailures": []}
    items = scan(aws)
    assert sum(1 for k in items if k[1].startswith("R#")) == 4
    latest = {k[0]: v for k, v in items.items() if k[1] == "LATEST"}
    assert set(latest) == {"DEVICE#dev-001", "DEVICE#dev-002", "DEVICE#dev-003"}
    assert latest["DEVICE#dev-001"]["seq"] == 2
    assert latest["DEVICE#dev-003"]["firmware"] == {"v": "2.0", "beta": True}
    # And the branch index serves the branch view
    page = aws["ddb"].query(
        TableName=aws["table"],
        IndexName="ByBranchLatest",
        KeyConditionExpression="latest_branch = :b",
        ExpressionAttributeValues={":b": {"S": "branch-nyc"}},
    )
    assert sorted(i["device_id"]["S"] for i in page["Items"]) == ["dev-001", "dev-002"]


def test_poison_pills_are_quarantined_and_good_records_stored(
    aws: dict[str, Any], lambda_context: FakeLambdaContext
) -> None:
    response = invoke(sample("poison-pills.json"), lambda_context)
    assert response == {"batchItemFailures": []}
    assert sum(1 for k in scan(aws) if k[1].startswith("R#")) == 2
    reasons = sorted(q["reason"] for q in quarantined(aws))
    assert len(reasons) == 5
    assert reasons[0].startswith("device_id: must be 1-128 characters")
    assert any(r.startswith("invalid JSON") for r in reasons)
    assert "not UTF-8 text" in reasons
    assert "ts: required" in reasons


def test_kpl_aggregated_batch(aws: dict[str, Any], lambda_context: FakeLambdaContext) -> None:
    response = invoke(sample("kpl-aggregated.json"), lambda_context)
    assert response == {"batchItemFailures": []}
    assert sum(1 for k in scan(aws) if k[1].startswith("R#")) == 6
    (bad,) = quarantined(aws)
    assert bad["sub_index"] == 2 and bad["reason"] == "branch_id: required"


def test_replayed_batch_changes_nothing(aws: dict[str, Any], lambda_context: FakeLambdaContext) -> None:
    event = sample("valid-batch.json")
    invoke(event, lambda_context)
    before = scan(aws)
    assert invoke(event, lambda_context) == {"batchItemFailures": []}
    assert scan(aws) == before


def test_out_of_order_readings_keep_the_newest_latest(aws: dict[str, Any], lambda_context: FakeLambdaContext) -> None:
    # Given the newest reading arrives first, then older ones in a later batch
    newest = reading("dev-9", "br-1", "2026-11-02T12:00:00Z", 2)
    older = [reading("dev-9", "br-1", "2026-11-02T11:00:00Z", 9), reading("dev-9", "br-1", "2026-11-02T12:00:00Z", 1)]
    invoke(kinesis_event([("dev-9", encode(newest))]), lambda_context)
    invoke(kinesis_event([("dev-9", encode(d)) for d in older], first_seq=5), lambda_context)
    # Then every reading is stored and LATEST is still the newest by (ts, seq)
    items = scan(aws)
    latest = items[("DEVICE#dev-9", "LATEST")]
    assert (latest["ts"], latest["seq"]) == ("2026-11-02T12:00:00.000000Z", 2)
    assert latest["latest_at"] == "2026-11-02T12:00:00.000000Z#0000000000000000002"
    assert sum(1 for k in items if k[1].startswith("R#")) == 3


@pytest.mark.parametrize("faults", [{"unprocessed_calls": 8}, {"throttled_calls": 6}])
def test_injected_faults_end_with_every_good_reading_stored(aws: dict[str, Any], faults: dict[str, int]) -> None:
    # Given a real (moto) client behind a fault injector
    settings = IngestSettings.from_env()
    faulty = FaultyDynamo(boto3.client("dynamodb"), **faults)
    docs = [reading(f"dev-{i % 20}", "br", 1_793_610_000_000 + i, i) for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        ingestor = build_ingestor(
            settings, faulty, boto3.client("s3"), pool, Retrier(Backoff(base_s=0.001), sleep=lambda _: None)
        )
        report = ingestor.ingest(kinesis_event([(d["device_id"], encode(d)) for d in docs])["Records"])
    # Then the faults happened, were retried, and every reading is stored
    assert sum(faulty.injected.values()) == next(iter(faults.values()))
    assert report.response() == {"batchItemFailures": []}
    items = scan(aws)
    assert sum(1 for k in items if k[1].startswith("R#")) == 200
    assert sum(1 for k in items if k[1] == "LATEST") == 20
