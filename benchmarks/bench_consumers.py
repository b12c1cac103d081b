"""Stream consumers: a 1,000-record DynamoDB stream batch (200 devices), each figure against a baseline.

- Redis round trips per batch for CacheUpdaterFunction (target 1), on the machine's Redis when one answers
  on 127.0.0.1:6379 (else fakeredis), counted by the writer at each network exchange.
- S3 PUTs per batch for StagerFunction (target 1), counted by an in-memory S3.
- CPU per record of each handler against the decode floor: ``json.loads`` of the same records (what the
  Lambda runtime spends turning the event into objects before any handler runs), in the same alternating runs
  with the function's own boto3 clients answered at the HTTP layer (``aws_stub``) and with in-memory fakes.
  The cache updater's batch also carries the table's LATEST modifications (one per device), a few of them
  regressions that its LATEST repair writes back through DynamoDB.
- Staged objects per hour and their median size at the design load (1,000 readings/s on 4 stream shards), before
  and after issue 16, against Redshift's 1 MB lower bound for COPY files: the stager writes one object per
  invocation, so Lambda's batching (``esm_batch``, with StagerEventSourceMapping's settings from template.yaml)
  decides how many readings each holds, and the real Stager gzips realistic readings (``producer.simulate``).
"""

from __future__ import annotations

import itertools
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fakeredis
import redis

from benchmarks.aws_stub import dynamodb_writes, s3_puts, stub
from benchmarks.bench_ingest import quiet_stdout, windowed_many
from devicepipe.cache import CacheWriter, newest_per_device
from devicepipe.config import RepairSettings
from devicepipe.dynamo import DynamoWriter, write_client
from devicepipe.retry import Deadline, Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe_tools.events import dynamodb_record, reading, table_item
from devicepipe_tools.fakes import FakeDynamo, FakeS3
from devicepipe_tools.producer import simulate
from devicepipe_tools.template import load_template, resource
from functions.cache_updater import app as cache_app
from functions.stager import app as stager_app
from tests.conftest import FakeLambdaContext

RECORDS = 1_000
DEVICES = 200
#: Devices whose LATEST the batch shows moved back (cross-region last writer wins), for the repair to restore.
REGRESSIONS = 10
CPU_SECONDS = 8.0

#: The design load of issue 16: 1,000 own-region readings/s over 4 stream shards (250 a shard).
SHARDS = 4
READINGS_PER_S = 1_000
#: Lambda closes a stream batch when its window ends, BatchSize records are in, or the payload reaches 6 MB
#: (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html, "Polling and batching streams"); 6 MB is the
#: synchronous invocation payload quota (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
PAYLOAD_BYTES = 6 * 1024 * 1024
#: Lambda polls a DynamoDB stream shard four times a second (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html).
POLL_S = 0.25
#: StagerEventSourceMapping before issue 16.
BEFORE = {"BatchSize": 1000, "MaximumBatchingWindowInSeconds": 10}
#: Redshift: COPY files of about equal size, "between 1 MB and 1 GB after compression"
#: (https://docs.aws.amazon.com/redshift/latest/dg/queries-troubleshooting-load-takes-too-long.html).
COPY_MIN_BYTES = 1024 * 1024
SAMPLE_OBJECTS = 5


@dataclass(frozen=True)
class Batching:
    """What one shard's mapping sends per invocation: records, every how many seconds, and what closed it."""

    records: int
    seconds: float
    closed_by: str  # window | BatchSize | payload

    def objects_per_hour(self, shards: int) -> float:
        return shards * 3600 / self.seconds


def esm_batch(settings: dict[str, Any], per_shard_per_s: float, record_bytes: float) -> Batching:
    """Lambda's batching arithmetic for one stream shard at a steady rate (records of ``record_bytes`` in the
    event): the first of window (a poll's worth without one), BatchSize and the 6 MB payload closes a batch."""
    limits = {
        "window": per_shard_per_s * max(float(settings["MaximumBatchingWindowInSeconds"]), POLL_S),
        "BatchSize": float(settings["BatchSize"]),
        "payload": PAYLOAD_BYTES // record_bytes,
    }
    closed_by = min(limits, key=lambda k: limits[k])
    records = max(1, int(limits[closed_by]))
    return Batching(records, records / per_shard_per_s, closed_by)


def shard_stream(count: int) -> list[dict[str, Any]]:
    """One shard's own-region reading inserts at the design load: a quarter of a 5,000-device fleet reporting every
    5 s, realistic readings from the producer's simulator, as Lambda delivers them."""
    per_shard = READINGS_PER_S / SHARDS
    ticks = itertools.count()
    start_s = 1_793_610_000.0
    docs = simulate(1250, 50, count=count, seed=16, clock=lambda: start_s + next(ticks) / per_shard)
    return [
        dynamodb_record(
            "INSERT",
            table_item(doc, arrival_s=start_s + i / per_shard + 0.2),
            sequence_number=4_100_000_000_000_000_000_000 + i * 100,
            created_s=start_s + i / per_shard,
        )
        for i, doc in enumerate(docs)
    ]


def stream_record_bytes() -> float:
    """The mean size of one of ``shard_stream``'s records in Lambda's event (JSON)."""
    return statistics.mean(len(json.dumps(r, separators=(",", ":"))) for r in shard_stream(200))


def staged_object_sizes(records: list[dict[str, Any]], per_object: int) -> list[int]:
    """Gzip bytes of the objects the real Stager writes for consecutive batches of ``per_object`` records."""
    s3 = FakeS3()
    stager = Stager(s3, "staging", "us-east-1", Retrier())
    for first in range(0, SAMPLE_OBJECTS * per_object, per_object):
        stager.stage(changes(records[first : first + per_object]))
    return [len(body) for body in s3.objects.values()]


def staging_sizes() -> list[tuple[str, float, float, bool]]:
    after = resource(load_template(), "StagerEventSourceMapping")["Properties"]
    per_shard = READINGS_PER_S / SHARDS
    record_bytes = stream_record_bytes()
    plans = {"before": esm_batch(BEFORE, per_shard, record_bytes), "after": esm_batch(after, per_shard, record_bytes)}
    stream = shard_stream(SAMPLE_OBJECTS * max(p.records for p in plans.values()))
    print(
        f"  staging at {READINGS_PER_S:,} readings/s on {SHARDS} shards ({record_bytes:.0f} B a stream record, "
        f"so 6 MB holds {PAYLOAD_BYTES // record_bytes:,.0f}):"
    )
    figures = {}
    for name, settings in (("before", BEFORE), ("after", after)):
        plan = plans[name]
        median = statistics.median(staged_object_sizes(stream, plan.records))
        figures[name] = (plan.objects_per_hour(SHARDS), median)
        print(
            f"    {name:6s} (BatchSize {settings['BatchSize']}, window {settings['MaximumBatchingWindowInSeconds']} s):"
            f" {plan.records:,} readings an object, closed by {plan.closed_by} every {plan.seconds:.1f} s a shard;"
            f" {figures[name][0]:,.0f} objects/hour, median {median / 1024:,.1f} KiB"
        )
    per_hour, median = figures["after"]
    print(
        f"    Redshift's COPY guidance (1 MB to 1 GB compressed): the median object is "
        f"{COPY_MIN_BYTES / median:.1f}x below 1 MiB; no mapping setting gets there (6 MB payload a batch)"
    )
    return [
        (f"staged objects/hour (before {figures['before'][0]:,.0f})", per_hour, 0.0, True),
        (f"staged median object KiB (before {figures['before'][1] / 1024:.1f})", median / 1024, 1024.0, False),
    ]


def make_event(latest: bool = False) -> dict[str, Any]:
    """RECORDS reading inserts; with ``latest``, then each device's LATEST modification from its next-to-last
    reading to its last, except for the first REGRESSIONS devices, whose LATEST another region moved back."""

    def doc(i: int) -> dict[str, Any]:
        return reading(f"device-{i % DEVICES:05d}", f"branch-{i % 17:03d}", 1_793_610_000_000 + i * 10, i)

    records = [
        dynamodb_record("INSERT", table_item(doc(i)), sequence_number=4_100_000_000_000 + i) for i in range(RECORDS)
    ]
    if latest:
        for d in range(DEVICES):
            newer, older = (
                table_item(doc(RECORDS - DEVICES + d), latest=True),
                table_item(doc(RECORDS - 2 * DEVICES + d), latest=True),
            )
            new, old = (older, newer) if d < REGRESSIONS else (newer, older)
            records.append(dynamodb_record("MODIFY", new, old=old, sequence_number=4_100_000_000_000 + RECORDS + d))
    return {"Records": records}


def local_redis() -> tuple[Any, str]:
    try:
        client = redis.Redis(host="127.0.0.1", port=6379, db=14, socket_connect_timeout=0.5)
        client.ping()
        return client, "redis-server 127.0.0.1:6379 db 14"
    except redis.RedisError:
        return fakeredis.FakeRedis(), "fakeredis (no Redis on 127.0.0.1:6379)"


def cpu_figures(
    name: str, texts: list[str], real: Any, fake: Any, records: int
) -> list[tuple[str, float, float, bool]]:
    """CPU per record of a handler with its real (stubbed) clients and with fakes, against the decode floor."""
    floor_s, ((real_s, _), (fake_s, _)) = windowed_many(
        CPU_SECONDS, 2.0, lambda: [json.loads(t) for t in texts], real, fake
    )
    print(
        f"  {name} CPU per record: real clients {real_s / records * 1e6:6.2f} us ({real_s / floor_s:4.2f}x),"
        f" fakes {fake_s / records * 1e6:6.2f} us ({fake_s / floor_s:4.2f}x); floor (json.loads)"
        f" {floor_s / records * 1e6:5.2f} us"
    )
    return [
        (f"{name} cpu/record vs floor, real", real_s / floor_s, 0.0, True),
        (f"{name} cpu/record vs floor, fake", fake_s / floor_s, 0.0, True),
    ]


def handler(app: Any, event: dict[str, Any], context: Any, before: Any) -> Any:
    def run() -> None:
        before()
        with quiet_stdout():
            app.lambda_handler(event, context)

    return run


def main() -> list[tuple[str, float, float, bool]]:
    event = make_event()
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

    # The batch with LATEST modifications: the repair writes REGRESSIONS items back through its client.
    mixed = make_event(latest=True)
    texts = [json.dumps(r) for r in mixed["Records"]]
    settings = RepairSettings(table_name="readings")
    repair_client = stub(write_client(**cache_app.repair_client_options(settings)), dynamodb_writes, parse_body=False)
    repair_pool = ThreadPoolExecutor(settings.max_concurrency)
    repairers = {
        "real": DynamoWriter(repair_client, "readings", repair_pool, Retrier(), settings.max_concurrency),
        "fake": DynamoWriter(FakeDynamo(), "readings", repair_pool, Retrier(), settings.max_concurrency),
    }

    def use(kind: str) -> Any:
        def put() -> None:
            repairer = repairers[kind]
            if kind == "fake":
                repairer.client = FakeDynamo()  # emptied: every repair is written, as through the stub
            cache_app._repairer = lambda: (repairer, Deadline.unlimited())  # type: ignore[assignment]

        return put

    handler(cache_app, mixed, context, use("real"))()
    print(
        f"  cache updater batch with {DEVICES} LATEST modifications, {REGRESSIONS} regressions repaired through"
        f" DynamoDB: {repair_client.calls.get('PutItem', 0)} PutItems"
    )
    rows += cpu_figures(
        "cache updater",
        texts,
        handler(cache_app, mixed, context, use("real")),
        handler(cache_app, mixed, context, use("fake")),
        len(texts),
    )
    for key in client.scan_iter("bench:*"):
        client.delete(key)
    repair_pool.shutdown()

    texts = [json.dumps(r) for r in event["Records"]]
    s3 = FakeS3()
    fake_stager = Stager(s3, "staging", "us-east-1", Retrier())
    real_s3 = stub(stager_app._s3(), s3_puts)  # the function's own client, as it builds it
    real_stager = Stager(real_s3, "staging", "us-east-1", Retrier())

    def stager(one: Stager) -> Any:
        return lambda: setattr(stager_app, "_stager", lambda: (one, Deadline.unlimited()))

    handler(stager_app, event, context, stager(fake_stager))()
    handler(stager_app, event, context, stager(real_stager))()
    puts = s3.calls
    print(
        f"  stager: S3 PUTs per batch {puts} (target 1; real client {real_s3.calls.get('PutObject', 0)}),"
        f" {len(next(iter(s3.objects.values())))} gzip bytes"
    )
    rows.append(("stager S3 PUTs per batch", float(puts), 1.0, puts == 1))
    rows += cpu_figures(
        "stager",
        texts,
        handler(stager_app, event, context, stager(real_stager)),
        handler(stager_app, event, context, stager(fake_stager)),
        RECORDS,
    )
    return rows + staging_sizes()
