"""Stream consumers: a 1,000-record DynamoDB stream batch (200 devices), each figure against a baseline.

- Redis round trips per batch for CacheUpdaterFunction (target 1), on the machine's Redis when one answers
  on 127.0.0.1:6379 (else fakeredis), counted by the writer at each network exchange.
- S3 PUTs per batch for StagerFunction (target 1), counted by an in-memory S3.
- CPU per record of each handler against the decode floor: ``json.loads`` of the same records (what the
  Lambda runtime spends turning the event into objects before any handler runs).
"""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import redis

from benchmarks.bench_ingest import interleaved, quiet_stdout
from devicepipe.cache import CacheWriter, newest_per_device
from devicepipe.retry import Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe_tools.events import dynamodb_record, reading, table_item
from devicepipe_tools.fakes import FakeS3
from functions.cache_updater import app as cache_app
from functions.stager import app as stager_app
from tests.conftest import FakeLambdaContext

RECORDS = 1_000
DEVICES = 200


def make_event() -> dict[str, Any]:
    records = []
    for i in range(RECORDS):
        doc = reading(f"device-{i % DEVICES:05d}", f"branch-{i % 17:03d}", 1_793_610_000_000 + i * 10, i)
        records.append(dynamodb_record("INSERT", table_item(doc), sequence_number=4_100_000_000_000 + i))
    return {"Records": records}


def local_redis() -> tuple[Any, str]:
    try:
        client = redis.Redis(host="127.0.0.1", port=6379, db=14, socket_connect_timeout=0.5)
        client.ping()
        return client, "redis-server 127.0.0.1:6379 db 14"
    except redis.RedisError:
        return fakeredis.FakeRedis(), "fakeredis (no Redis on 127.0.0.1:6379)"


def main() -> list[tuple[str, float, float, bool]]:
    event = make_event()
    texts = [json.dumps(r) for r in event["Records"]]
    rows = []
    context = FakeLambdaContext()
    client, where = local_redis()
    print(f"consumers: {RECORDS} stream records from {DEVICES} devices; cache on {where}")

    writer = CacheWriter(client, prefix="bench")
    cache_app._writer = lambda: writer  # type: ignore[assignment]
    with quiet_stdout():
        cache_app.lambda_handler(event, context)  # warm-up, loads the script
    before = writer.round_trips
    with quiet_stdout():
        cache_app.lambda_handler(event, context)
    trips = writer.round_trips - before
    print(
        f"  cache updater: Redis round trips per batch {trips} (target 1), "
        f"{len(newest_per_device(list(changes(event['Records']))))} devices updated per batch"
    )
    rows.append(("cache Redis round trips per batch", float(trips), 1.0, trips == 1))

    def run_cache() -> None:
        with quiet_stdout():
            cache_app.lambda_handler(event, context)

    floor_s, cache_s = interleaved(15, lambda: [json.loads(t) for t in texts], run_cache)
    print(
        f"  cache updater CPU per record {cache_s / RECORDS * 1e6:6.2f} us, floor (json.loads) "
        f"{floor_s / RECORDS * 1e6:5.2f} us, ratio {cache_s / floor_s:4.2f}x"
    )
    rows.append(("cache CPU/record vs decode floor (info)", cache_s / floor_s, 0.0, True))
    for key in client.scan_iter("bench:*"):
        client.delete(key)

    s3 = FakeS3()
    stager = Stager(s3, "staging", "us-east-1", Retrier())
    stager_app._stager = lambda: (stager, stager.retrier.deadline)  # type: ignore[assignment]

    def run_stager() -> None:
        with quiet_stdout():
            stager_app.lambda_handler(event, context)

    run_stager()
    puts = s3.calls
    print(f"  stager: S3 PUTs per batch {puts} (target 1), {len(next(iter(s3.objects.values())))} gzip bytes")
    rows.append(("stager S3 PUTs per batch", float(puts), 1.0, puts == 1))
    floor_s, stage_s = interleaved(15, lambda: [json.loads(t) for t in texts], run_stager)
    print(
        f"  stager CPU per record {stage_s / RECORDS * 1e6:6.2f} us, floor (json.loads) "
        f"{floor_s / RECORDS * 1e6:5.2f} us, ratio {stage_s / floor_s:4.2f}x"
    )
    rows.append(("stager CPU/record vs decode floor (info)", stage_s / floor_s, 0.0, True))
    return rows
