"""CacheUpdaterFunction against a real Redis server, StagerFunction against moto S3, through their handlers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from devicepipe_tools.events import dynamodb_record, reading, table_item
from devicepipe_tools.template import ROOT, create_table_kwargs
from functions.cache_updater import app as cache_app
from functions.latest_repair import app as repair_app
from functions.stager import app as stager_app
from tests.conftest import FakeLambdaContext, PrivateRedis

pytestmark = pytest.mark.integration
SHARED_REDIS = "redis://127.0.0.1:6379/15"


def redis_available(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The handler pointed at the machine's Redis (db 15), under a key prefix of its own."""
    if not redis_available(SHARED_REDIS):
        pytest.skip("no Redis server on 127.0.0.1:6379 (.ci/run starts one)")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REDIS_URL", SHARED_REDIS)
    monkeypatch.setenv("CACHE_KEY_PREFIX", prefix)
    monkeypatch.setenv("TABLE_NAME", "devicepipe-readings")
    cache_app._writer.cache_clear()
    client = redis.Redis.from_url(SHARED_REDIS, decode_responses=True)
    yield client
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    cache_app._writer.cache_clear()


def sample(path: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / path).read_text())
    return event


def stream_event(*records: tuple[str, dict[str, Any]], start: int = 1) -> dict[str, Any]:
    return {"Records": [dynamodb_record(n, i, sequence_number=start + k) for k, (n, i) in enumerate(records)]}


def cached(client: redis.Redis, device: str) -> dict[str, str]:
    return client.hgetall(f"{cache_app._writer().prefix}:device:{device}")  # type: ignore[return-value]


def test_out_of_order_events_leave_the_newest_reading(
    cache_env: redis.Redis, lambda_context: FakeLambdaContext
) -> None:
    # Given the newest reading arrives before an older one in the same batch
    assert cache_app.lambda_handler(sample("cache_updater/out-of-order.json"), lambda_context) == {
        "batchItemFailures": []
    }
    # Then the cache holds the newest; an older batch later changes nothing
    assert cached(cache_env, "dev-001")["seq"] == "2"
    older = table_item(reading("dev-001", "branch-nyc", "2026-11-02T08:00:00Z", 99))
    cache_app.lambda_handler(stream_event(("INSERT", older), start=50), lambda_context)
    assert cached(cache_env, "dev-001")["seq"] == "2"


def test_replayed_and_replicated_writes(cache_env: redis.Redis, lambda_context: FakeLambdaContext) -> None:
    event = sample("cache_updater/mixed.json")
    cache_app.lambda_handler(event, lambda_context)
    snapshot = {d: cached(cache_env, d) for d in ("dev-002", "dev-003")}
    cache_app.lambda_handler(event, lambda_context)  # replay
    assert {d: cached(cache_env, d) for d in ("dev-002", "dev-003")} == snapshot
    # The replicated write (origin eu-west-1) is cached like a local one; the REMOVE evicted nothing
    assert snapshot["dev-003"]["origin_region"] == "eu-west-1"
    prefix = cache_app._writer().prefix
    assert cache_env.zscore(f"{prefix}:branch:branch-bos:devices", "dev-002") == 1_793_610_600_000
    assert cache_env.ttl(f"{prefix}:device:dev-002") > 0  # expires with the reading's DynamoDB TTL


def test_redis_down_mid_batch_fails_the_batch_and_the_retry_loses_nothing(
    lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    monkeypatch.setenv("TABLE_NAME", "t")
    cache_app._writer.cache_clear()
    try:
        # Given a first batch applied, then Redis going away
        cache_app.lambda_handler(sample("cache_updater/out-of-order.json"), lambda_context)
        private_redis.stop()
        # When the next batch arrives, every record is reported for retry
        event = sample("cache_updater/mixed.json")
        response = cache_app.lambda_handler(event, lambda_context)
        assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [
            r["dynamodb"]["SequenceNumber"] for r in event["Records"]
        ]
        # And once Redis is back, the retried batch is applied
        private_redis.start()
        assert cache_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
        client = redis.Redis(port=private_redis.port, decode_responses=True)
        assert client.hget("dp:device:dev-002", "branch_id") == "branch-bos"
    finally:
        cache_app._writer.cache_clear()


@pytest.fixture
def staging(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="staging")
        s3.put_bucket_versioning(Bucket="staging", VersioningConfiguration={"Status": "Enabled"})
        monkeypatch.setenv("STAGING_BUCKET", "staging")
        stager_app._stager.cache_clear()
        yield s3
        stager_app._stager.cache_clear()


def test_stager_writes_own_region_readings_and_a_replay_rewrites_the_same_object(
    staging: Any, lambda_context: FakeLambdaContext
) -> None:
    event = sample("stager/own-and-replicated.json")
    assert stager_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    (obj,) = staging.list_objects_v2(Bucket="staging")["Contents"]
    first = staging.get_object(Bucket="staging", Key=obj["Key"])["Body"].read()
    time.sleep(0.01)
    assert stager_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    versions = staging.list_object_versions(Bucket="staging")["Versions"]
    assert len(versions) == 2 and {v["Key"] for v in versions} == {obj["Key"]}
    assert staging.get_object(Bucket="staging", Key=obj["Key"])["Body"].read() == first
    assert len({v["ETag"] for v in versions}) == 1  # same bytes


def test_stager_failure_reports_every_record(
    staging: Any, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGING_BUCKET", "no-such-bucket")
    stager_app._stager.cache_clear()
    event = sample("stager/own-and-replicated.json")
    response = stager_app.lambda_handler(event, lambda_context)
    assert len(response["batchItemFailures"]) == len(event["Records"])


def test_latest_repair_restores_the_newer_image_that_replication_overwrote(
    template: dict[str, Any], lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = sample("latest_repair/replicated-regression.json")
    regressed, forward = (r["dynamodb"] for r in event["Records"])
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", "t"))
        # The table as last-writer-wins left it: the older reading in dev-001's LATEST, dev-003 moved forward.
        ddb.put_item(TableName="t", Item=regressed["NewImage"])
        ddb.put_item(TableName="t", Item=forward["NewImage"])
        monkeypatch.setenv("TABLE_NAME", "t")
        repair_app._writer.cache_clear()
        try:
            assert repair_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
            # replayed (the ESM retries whole batches): the condition refuses, nothing changes
            assert repair_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
        finally:
            repair_app._writer.cache_clear()
        stored = {i["device_id"]["S"]: i for i in ddb.scan(TableName="t")["Items"] if i["sk"]["S"] == "LATEST"}
    assert stored["dev-001"] == regressed["OldImage"]  # restored exactly, origin region included
    assert stored["dev-003"] == forward["NewImage"]  # a forward move is left alone
