"""CacheUpdaterFunction against a real Redis server (and moto DynamoDB for its LATEST repair), StagerFunction
against moto S3, through their handlers."""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from devicepipe.dynamo import DynamoWriter
from devicepipe.retry import Backoff, Deadline, Retrier
from devicepipe_tools.events import dynamodb_record, reading, table_item, undecodable_records
from devicepipe_tools.fakes import FakeDynamo, FaultyDynamo
from devicepipe_tools.template import ROOT, create_table_kwargs
from functions.cache_updater import app as cache_app
from functions.stager import app as stager_app
from tests.conftest import FakeLambdaContext, PrivateRedis

pytestmark = pytest.mark.integration
SHARED_REDIS = "redis://127.0.0.1:6379/15"
TABLE = "devicepipe-readings"
BOTH_PURPOSES = "cache_updater/readings-and-latest-regression.json"


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
    monkeypatch.setenv("TABLE_NAME", TABLE)
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


def test_redis_down_mid_batch_fails_the_readings_and_the_retry_loses_nothing(
    lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    monkeypatch.setenv("TABLE_NAME", "t")
    cache_app._writer.cache_clear()
    try:
        # Given a first batch applied, then Redis going away
        cache_app.lambda_handler(sample("cache_updater/out-of-order.json"), lambda_context)
        private_redis.stop()
        # When the next batch arrives, every reading insert or change in it is reported for retry (its LATEST
        # insert and REMOVE, which the mapping's filters would not even pass, are no cache work)
        event = sample("cache_updater/mixed.json")
        lambda_context.remaining_ms = cache_app.CACHE_RESERVE_MS  # no time to wait Redis out (test_cache_failover.py)
        response = cache_app.lambda_handler(event, lambda_context)
        assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [
            r["dynamodb"]["SequenceNumber"]
            for r in event["Records"]
            if r["eventName"] != "REMOVE" and r["dynamodb"]["Keys"]["sk"]["S"].startswith("R#")
        ]
        # And once Redis is back, the retried batch is applied
        private_redis.start()
        assert cache_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
        client = redis.Redis(port=private_redis.port, decode_responses=True)
        assert client.hget("dp:device:dev-002", "branch_id") == "branch-bos"
    finally:
        cache_app._writer.cache_clear()


def clear_quarantines() -> None:
    for app in (cache_app, stager_app):
        built = getattr(app, "_quarantine", None)  # (absent before stream records were quarantined: issue 16)
        if built is not None:
            built.cache_clear()


@pytest.fixture
def quarantine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The quarantine bucket in moto (the stack's QuarantineBucket, shared with the ingest)."""
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="quarantine")
        monkeypatch.setenv("QUARANTINE_BUCKET", "quarantine")
        clear_quarantines()
        yield s3
        clear_quarantines()


def quarantined(s3: Any) -> dict[str, dict[str, Any]]:
    """The quarantine's documents by key."""
    listed = s3.list_objects_v2(Bucket="quarantine").get("Contents", [])
    return {o["Key"]: json.loads(s3.get_object(Bucket="quarantine", Key=o["Key"])["Body"].read()) for o in listed}


@pytest.fixture
def staging(quarantine: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    s3 = quarantine
    s3.create_bucket(Bucket="staging")
    s3.put_bucket_versioning(Bucket="staging", VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv("STAGING_BUCKET", "staging")
    stager_app._stager.cache_clear()
    yield s3
    stager_app._stager.cache_clear()


#: What each record of ``undecodable_records`` breaks, as its quarantine reason names it.
REASONS = {
    "no dynamodb section": "dynamodb",
    "binary attribute": "firmware",
    "string set attribute": "tags",
    "number set in metrics": "metrics.samples",
    "missing device_id": "device_id",
    "unparsable ts": "ts",
}


def around(bad: dict[str, Any]) -> dict[str, Any]:
    """A batch with ``bad`` between two good reading inserts (dev-a before it, dev-b after it)."""
    first = table_item(reading("dev-a", "branch-nyc", "2026-11-02T09:00:00Z", 1))
    last = table_item(reading("dev-b", "branch-nyc", "2026-11-02T09:00:01Z", 2))
    return {
        "Records": [
            dynamodb_record("INSERT", first, sequence_number=1),
            bad,
            dynamodb_record("INSERT", last, sequence_number=100),
        ]
    }


def assert_quarantined(s3: Any, stage: str, bad: dict[str, Any], reason: str) -> None:
    """One document under the stage's prefix: the record as delivered, and why it was refused."""
    ((key, doc),) = quarantined(s3).items()
    assert key.startswith(f"quarantine/stage={stage}/")
    assert reason in doc["reason"], doc["reason"]
    assert json.loads(base64.b64decode(doc["payload_base64"])) == bad


@pytest.mark.parametrize("fault", sorted(REASONS))
def test_cache_updater_quarantines_a_record_it_cannot_decode_and_applies_the_rest(
    cache_env: redis.Redis, quarantine: Any, lambda_context: FakeLambdaContext, fault: str
) -> None:
    # Given a batch with a record that breaks the item contract between two good readings
    bad = undecodable_records(10)[fault]
    # When it is handled, Then the batch succeeds (the bad record is not retried: it would fail again)
    assert cache_app.lambda_handler(around(bad), lambda_context) == {"batchItemFailures": []}
    # And the good readings are cached, the bad record quarantined with its reason
    assert cached(cache_env, "dev-a")["seq"] == "1" and cached(cache_env, "dev-b")["seq"] == "2"
    assert_quarantined(quarantine, "cache-updater", bad, REASONS[fault])


def test_a_quarantine_write_that_fails_leaves_only_the_bad_record_for_retry(
    cache_env: redis.Redis, quarantine: Any, lambda_context: FakeLambdaContext
) -> None:
    quarantine.delete_bucket(Bucket="quarantine")  # every write fails (NoSuchBucket)
    bad = undecodable_records(10)["binary attribute"]
    response = cache_app.lambda_handler(around(bad), lambda_context)
    assert response == {"batchItemFailures": [{"itemIdentifier": bad["dynamodb"]["SequenceNumber"]}]}
    assert cached(cache_env, "dev-b")["seq"] == "2"


def staged_rows(s3: Any) -> list[dict[str, Any]]:
    rows = []
    for obj in s3.list_objects_v2(Bucket="staging", Prefix="readings/").get("Contents", []):
        body = s3.get_object(Bucket="staging", Key=obj["Key"])["Body"].read()
        rows += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return rows


@pytest.mark.parametrize("fault", sorted(REASONS))
def test_stager_quarantines_a_record_it_cannot_decode_and_stages_the_rest_without_nulls(
    staging: Any, lambda_context: FakeLambdaContext, fault: str
) -> None:
    bad = undecodable_records(10)[fault]
    assert stager_app.lambda_handler(around(bad), lambda_context) == {"batchItemFailures": []}
    rows = staged_rows(staging)
    assert [r["device_id"] for r in rows] == ["dev-a", "dev-b"]
    assert all(value is not None for r in rows for value in r.values()), rows
    assert_quarantined(staging, "stager", bad, REASONS[fault])


def test_stager_fails_the_whole_batch_when_a_quarantine_write_fails(
    staging: Any, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is retried as it was, so that its staged object keeps its key."""
    monkeypatch.setenv("QUARANTINE_BUCKET", "no-such-bucket")
    event = around(undecodable_records(10)["missing device_id"])
    response = stager_app.lambda_handler(event, lambda_context)
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == ["1", "14", "100"]


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


@pytest.fixture
def table(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The readings table in moto, for the LATEST repair's writes."""
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))
        monkeypatch.setenv("TABLE_NAME", TABLE)
        cache_app._repairer.cache_clear()
        yield ddb
        cache_app._repairer.cache_clear()


def latest_changes(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sample's LATEST changes: dev-001 moved back by last writer wins, dev-003 moved forward."""
    regressed, forward = (r["dynamodb"] for r in event["Records"] if r["dynamodb"]["Keys"]["sk"]["S"] == "LATEST")
    return regressed, forward


def as_left_by_last_writer_wins(ddb: Any, event: dict[str, Any]) -> None:
    """LATEST items as replication left them: each LATEST change's new image stored."""
    for change in latest_changes(event):
        ddb.put_item(TableName=TABLE, Item=change["NewImage"])


def latest_items(ddb: Any) -> dict[str, dict[str, Any]]:
    return {i["device_id"]["S"]: i for i in ddb.scan(TableName=TABLE)["Items"] if i["sk"]["S"] == "LATEST"}


def sequence_numbers(event: dict[str, Any], sk_prefix: str) -> list[str]:
    records = event["Records"]
    return [r["dynamodb"]["SequenceNumber"] for r in records if r["dynamodb"]["Keys"]["sk"]["S"].startswith(sk_prefix)]


def test_one_batch_updates_the_cache_and_restores_the_latest_that_replication_moved_back(
    cache_env: redis.Redis, table: Any, lambda_context: FakeLambdaContext
) -> None:
    # Given a batch of both kinds (its mapping passes readings and LATEST changes), and dev-001's LATEST moved
    # back to an older reading by last writer wins
    event = sample(BOTH_PURPOSES)
    regressed, forward = latest_changes(event)
    as_left_by_last_writer_wins(table, event)
    # When it is handled, then replayed (Lambda replays the records after a checkpoint)
    assert cache_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert cache_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    # Then LATEST holds the newer image again, exactly (origin region included); a forward move is left alone
    stored = latest_items(table)
    assert stored["dev-001"] == regressed["OldImage"]
    assert stored["dev-003"] == forward["NewImage"]
    # And the readings are cached
    assert cached(cache_env, "dev-001")["seq"] == "2"
    assert cached(cache_env, "dev-003")["origin_region"] == "eu-west-1"


def test_redis_down_fails_only_the_readings_and_the_repair_is_written_on_every_attempt(
    table: Any, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis
) -> None:
    """Lambda checkpoints before the lowest reported sequence number and retries every record from there
    (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html), so a Redis outage
    replays the LATEST records after the first reading too: the repair must run, and succeed, on each attempt."""
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    cache_app._writer.cache_clear()
    event = sample(BOTH_PURPOSES)
    regressed, _ = latest_changes(event)
    private_redis.stop()
    lambda_context.remaining_ms = cache_app.CACHE_RESERVE_MS  # no time to wait Redis out (test_cache_failover.py)
    try:
        for _attempt in range(2):
            # Given LATEST moved back (again, before each attempt) and Redis down
            as_left_by_last_writer_wins(table, event)
            # When the batch is handled, only the reading records are reported for retry
            response = cache_app.lambda_handler(event, lambda_context)
            assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == sequence_numbers(event, "R#")
            # And the repair was written all the same
            assert latest_items(table)["dev-001"] == regressed["OldImage"]
        # Then once Redis is back, the retried batch is applied and the replayed repair changes nothing
        private_redis.start()
        assert cache_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
        client = redis.Redis(port=private_redis.port, decode_responses=True)
        assert client.hget("dp:device:dev-001", "seq") == "2"
        assert latest_items(table)["dev-001"] == regressed["OldImage"]
    finally:
        cache_app._writer.cache_clear()


def test_a_repair_write_that_keeps_failing_fails_only_its_latest_record(
    cache_env: redis.Redis, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given DynamoDB throttling every write of the repair
    throttled = FaultyDynamo(FakeDynamo(), throttled_calls=100)
    retrier = Retrier(Backoff(base_s=0.001, cap_s=0.001, max_attempts=3), sleep=lambda _: None)
    writer = DynamoWriter(throttled, TABLE, ThreadPoolExecutor(2), retrier, 2)
    monkeypatch.setattr(cache_app, "_repairer", lambda: (writer, Deadline.unlimited()))
    # When a batch of both kinds is handled
    event = sample(BOTH_PURPOSES)
    response = cache_app.lambda_handler(event, lambda_context)
    # Then only the regression's record is reported, and the readings are cached all the same
    regressed, _ = latest_changes(event)
    assert response == {"batchItemFailures": [{"itemIdentifier": regressed["SequenceNumber"]}]}
    assert cached(cache_env, "dev-001")["seq"] == "2"


def test_the_fault_samples_are_handled_as_sam_local_invoke_would_run_them(
    staging: Any, cache_env: redis.Redis, lambda_context: FakeLambdaContext
) -> None:
    """events/*/undecodable-records.json: every kind of record the consumers refuse, between two good readings;
    events/stager/exact-numbers.json: numbers a float cannot carry, staged digit for digit."""
    for app, folder in ((cache_app, "cache_updater"), (stager_app, "stager")):
        event = sample(f"{folder}/undecodable-records.json")
        assert app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    stages = [key.split("/")[1] for key in quarantined(staging)]
    assert stages.count("stage=cache-updater") == stages.count("stage=stager") == len(REASONS)
    assert [r["device_id"] for r in staged_rows(staging)] == ["dev-001", "dev-002"]
    assert cached(cache_env, "dev-002")["seq"] == "9"

    stager_app.lambda_handler(sample("stager/exact-numbers.json"), lambda_context)
    listed = staging.list_objects_v2(Bucket="staging", Prefix="readings/")["Contents"]
    bodies = [gzip.decompress(staging.get_object(Bucket="staging", Key=o["Key"])["Body"].read()) for o in listed]
    (body,) = [b for b in bodies if b"energy_kwh" in b]
    assert b'"energy_kwh":1234567890.1234567890123456789' in body and b'"tiny":1E-130' in body
