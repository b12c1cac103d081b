"""ReadApiFunction through its handler: a real redis-server, DynamoDB on moto, the sample events in events/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from devicepipe.dynamo import latest_item, reading_item
from devicepipe.models import parse_reading
from devicepipe_tools.events import reading, sample_events
from devicepipe_tools.local.net import free_port
from devicepipe_tools.template import create_table_kwargs
from functions.read_api import app as read_app
from tests.conftest import FakeLambdaContext, PrivateRedis

pytestmark = pytest.mark.integration
TABLE = "devicepipe-readings"


@dataclass
class Stack:
    ddb: Any
    redis: redis.Redis
    server: PrivateRedis

    def call(self, name: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        answer = read_app.lambda_handler(sample_events()[f"read_api/{name}.json"], FakeLambdaContext())
        is_json = answer["headers"]["Content-Type"] == "application/json"
        return answer["statusCode"], json.loads(answer["body"]) if is_json else {}, answer["headers"]

    def store(self, device: str, branch: str, ts: str, seq: int) -> None:
        r = parse_reading(reading(device, branch, ts, seq), now_s=1_793_700_000)
        item = reading_item(r.attributes, r.epoch_s, {"S": "us-east-1"}, {"S": "x"}, 3650 * 86_400)
        self.ddb.put_item(TableName=TABLE, Item=item)
        self.ddb.put_item(TableName=TABLE, Item={**latest_item(r), "expires_at": item["expires_at"]})


@pytest.fixture
def stack(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis) -> Iterator[Stack]:
    """The handler pointed at a redis-server of its own (so the test can stop it) and a moto table."""
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    monkeypatch.setenv("TABLE_NAME", TABLE)
    read_app._reads.cache_clear()
    read_app._settings.cache_clear()
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))
        try:
            yield Stack(ddb, redis.Redis(port=private_redis.port, decode_responses=True), private_redis)
        finally:
            read_app._reads.cache_clear()


def seed(stack: Stack) -> None:
    for seq, ts in enumerate(["2026-11-02T09:00:00Z", "2026-11-02T09:00:05Z", "2026-11-02T09:01:00Z"]):
        stack.store("dev-001", "branch-nyc", ts, seq)
    stack.store("dev-002", "branch-nyc", "2026-11-02T09:00:30Z", 7)


def test_every_sample_event_gets_its_documented_answer(stack: Stack) -> None:
    seed(stack)
    expected = {
        "latest": 200,
        "readings": 200,
        "branches": 200,
        "branch-devices": 200,
        "health": 200,
        "dashboard": 200,
        "unknown-device": 404,
        "bad-device-id": 400,
        "bad-limit": 400,
        "bad-time": 400,
        "bad-cursor": 400,
    }
    got = {name: stack.call(name)[0] for name in expected}
    assert got == expected
    body = stack.call("readings")[1]
    assert [r["seq"] for r in body["readings"]] == [2, 1] and body["next_cursor"]
    body = stack.call("branch-devices")[1]
    assert [d["device_id"] for d in body["devices"]] == ["dev-001", "dev-002"]


def test_a_miss_is_cached_with_its_version_and_the_next_read_hits(stack: Stack) -> None:
    seed(stack)
    first, second = stack.call("latest")[1], stack.call("latest")[1]
    assert (first["source"], second["source"]) == ("table", "cache")
    assert first["reading"] == second["reading"] and first["reading"]["seq"] == 2
    cached = stack.redis.hgetall("dp:device:dev-001")
    assert cached["version"] == "2026-11-02T09:01:00.000000Z#" + "2".zfill(19)
    assert stack.redis.ttl("dp:device:dev-001") > 0  # expires with the reading's TTL


def test_a_stale_cached_reading_is_never_written_over_a_newer_one(stack: Stack) -> None:
    seed(stack)
    stack.call("latest")  # caches seq 2
    # the table's LATEST moves back (replicated last writer), then the cache is filled from it
    stack.store("dev-001", "branch-nyc", "2026-11-02T09:00:00Z", 0)
    stack.redis.delete("dp:branch:branch-nyc:devices:loaded")
    stack.call("branch-devices")
    assert stack.redis.hget("dp:device:dev-001", "seq") == "2"


def test_redis_down_is_served_from_the_table_and_both_down_is_503(stack: Stack) -> None:
    seed(stack)
    stack.server.stop()
    status, body, _ = stack.call("latest")
    assert (status, body["source"]) == (200, "table")
    status, body, _ = stack.call("health")
    assert (status, body["status"]) == (200, "degraded")
    read_app._reads.cache_clear()
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        status, body, headers = stack.call("latest")
        assert status == 503 and body["error"]["code"] == "unavailable" and int(headers["Retry-After"]) > 0
    finally:
        del os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
        read_app._reads.cache_clear()
