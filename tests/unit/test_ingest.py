"""Ingest rules with in-memory fakes: batching, dedup, quarantine, retries and partial-batch failures."""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from benchmarks.aws_stub import dynamodb_writes, stub
from devicepipe.config import IngestSettings
from devicepipe.dynamo import LATEST_CONDITION, DynamoClient, write_client
from devicepipe.ingest import Ingestor, build_ingestor
from devicepipe.kpl import SubRecord, aggregate
from devicepipe.models import unmarshal_item
from devicepipe.retry import Backoff, Retrier
from devicepipe_tools.events import encode, kinesis_event, reading
from devicepipe_tools.fakes import FakeDynamo, FakeS3, FaultyDynamo, client_error

SETTINGS = IngestSettings(table_name="readings", quarantine_bucket="quarantine", region="us-east-1")


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as pool:
        yield pool


def make(
    executor: ThreadPoolExecutor, dynamo: DynamoClient, s3: FakeS3 | None = None, attempts: int = 6
) -> tuple[Ingestor, FakeS3]:
    s3 = s3 or FakeS3()
    retrier = Retrier(Backoff(max_attempts=attempts), sleep=lambda _: None)
    ingestor = build_ingestor(SETTINGS, dynamo, s3, executor, retrier)
    ingestor.clock = lambda: 1_795_000_000.0
    return ingestor, s3


def event_of(docs: list[Any], **kw: Any) -> list[dict[str, Any]]:
    payloads = [(d.get("device_id", "x") if isinstance(d, dict) else "x", encode(d)) for d in docs]
    records: list[dict[str, Any]] = kinesis_event(payloads, **kw)["Records"]
    return records


def readings(n: int, devices: int = 10) -> list[dict[str, Any]]:
    return [reading(f"dev-{i % devices}", f"br-{i % 3}", 1_793_610_000_000 + i, i) for i in range(n)]


def stored(dynamo: FakeDynamo, sk_prefix: str = "R#") -> dict[tuple[str, str], dict[str, Any]]:
    return {k: unmarshal_item(v) for k, v in dynamo.items.items() if k[1].startswith(sk_prefix)}


def test_clean_batch_writes_every_reading_and_one_latest_per_device(executor: ThreadPoolExecutor) -> None:
    # Given 120 valid readings from 10 devices
    dynamo = FakeDynamo()
    ingestor, _ = make(executor, dynamo)
    # When the batch is ingested
    report = ingestor.ingest(event_of(readings(120)))
    # Then every reading is stored, LATEST holds each device's newest, and calls are at their floor
    assert report.response() == {"batchItemFailures": []}
    assert len(stored(dynamo)) == 120 and report.written == 120
    latest = stored(dynamo, "LATEST")
    assert len(latest) == 10
    assert latest[("DEVICE#dev-3", "LATEST")]["seq"] == 113
    assert latest[("DEVICE#dev-3", "LATEST")]["latest_branch"] == "br-2"
    assert dynamo.calls == {"BatchWriteItem": math.ceil(120 / 25), "PutItem": 10}
    item = stored(dynamo)[("DEVICE#dev-0", "R#2026-11-02T09:00:00.000000Z#0000000000000000000")]
    assert item["origin_region"] == "us-east-1"
    assert item["ingested_at"] == "2026-11-18T11:06:40.000000Z"
    assert item["expires_at"] == 1_793_610_000 + 90 * 86_400


def test_a_real_write_client_sends_what_the_fake_stores(executor: ThreadPoolExecutor) -> None:
    # Given the function's DynamoDB client (dynamo.write_client), answered at the HTTP layer, and the fake
    sent: dict[tuple[str, str], dict[str, Any]] = {}

    def answer(operation: str, body: dict[str, Any]) -> dict[str, Any]:
        if operation == "BatchWriteItem":
            requests = body["RequestItems"][SETTINGS.table_name]
            items = [r["PutRequest"]["Item"] for r in requests]
        else:
            items = [body["Item"]]
            assert body["ConditionExpression"] == LATEST_CONDITION
        sent.update({(i["pk"]["S"], i["sk"]["S"]): i for i in items})
        return dynamodb_writes(operation, body)

    real = stub(write_client(), answer)
    fake = FakeDynamo()
    # When the same batch is ingested through each
    docs = readings(60)
    for client in (real, fake):
        ingestor, _ = make(executor, client)
        assert ingestor.ingest(event_of(docs)).response() == {"batchItemFailures": []}
    # Then DynamoDB gets the very items the fake stores, in as many calls
    assert sent == fake.items
    assert real.calls == dict(fake.calls)


def test_identical_readings_in_one_batch_are_written_once(executor: ThreadPoolExecutor) -> None:
    dynamo = FakeDynamo()
    ingestor, _ = make(executor, dynamo)
    docs = readings(30)
    report = ingestor.ingest(event_of(docs + docs[:5]))
    assert report.duplicates == 5 and report.readings == 30
    assert dynamo.calls["BatchWriteItem"] == 2
    assert report.response() == {"batchItemFailures": []}


def test_poison_pills_are_quarantined_with_reason_and_not_retried(executor: ThreadPoolExecutor) -> None:
    # Given good readings with a non-JSON record, an array, a contract violation and an oversize record
    dynamo = FakeDynamo()
    ingestor, s3 = make(executor, dynamo)
    records = event_of(readings(4))
    bad = kinesis_event(
        [
            ("x", b"{oops"),
            ("x", b"[1]"),
            ("x", encode(reading("bad id", "b", 1_793_610_000_000))),
            ("x", b'{"pad":"' + b"a" * 70_000 + b'"}'),
            ("x", b'{"metrics": NaN}'),
        ],
        first_seq=50,
    )["Records"]
    # When ingested together
    report = ingestor.ingest(records[:2] + bad + records[2:])
    # Then the good ones are stored, the bad ones are in the quarantine with their bytes and reasons
    assert report.response() == {"batchItemFailures": []}
    assert report.written == 4 and report.quarantined == 5
    docs = {json.loads(body)["sequence_number"]: json.loads(body) for body in s3.objects.values()}
    reasons = sorted(d["reason"].split(":")[0] for d in docs.values())
    assert reasons == [
        "device_id",
        "invalid JSON",
        "invalid JSON",
        "not a JSON object",
        "record is 70010 bytes, over the 65536-byte limit",
    ]
    first = docs[bad[0]["kinesis"]["sequenceNumber"]]
    assert first["payload_base64"] == "e29vcHM="  # b"{oops"
    assert first["stage"] == "ingest" and first["shard_id"] == "shardId-000000000000"
    (bucket, key), *_ = s3.objects
    assert bucket == "quarantine" and key.startswith("quarantine/stage=ingest/dt=2026-11-18/shardId-000000000000/")


def test_integers_beyond_64_bits_are_stored_exactly_and_beyond_38_digits_quarantined(
    executor: ThreadPoolExecutor,
) -> None:
    # Given integers orjson would round to floats (beyond 64 bits, nested too), a real big float, and an
    # integer of 39 digits (more than DynamoDB keeps)
    dynamo = FakeDynamo()
    ingestor, s3 = make(executor, dynamo)
    docs = [
        reading("dev-1", "b", 1_793_610_000_000, 1, big=10**20 + 1, nested=[-(2**64) - 3], real=1.5e20),
        reading("dev-1", "b", 1_793_610_000_000, 2, big=10**38),
    ]
    # When ingested
    report = ingestor.ingest(event_of(docs))
    # Then the first is stored with every digit and the second quarantined with DynamoDB's limit as the reason
    assert report.written == 1 and report.quarantined == 1
    (item,) = stored(dynamo).values()
    assert item["metrics"] == {"big": 10**20 + 1, "nested": [-(2**64) - 3], "real": 1.5e20}
    (body,) = s3.objects.values()
    assert json.loads(body)["reason"] == "metrics.big: integer has more than 38 digits"


def test_kpl_aggregated_record_is_split_and_bad_sub_records_quarantined(executor: ThreadPoolExecutor) -> None:
    dynamo = FakeDynamo()
    ingestor, s3 = make(executor, dynamo)
    subs = [SubRecord(r["device_id"], encode(r)) for r in readings(6, devices=6)]
    subs.insert(3, SubRecord("x", b"not json"))
    report = ingestor.ingest(kinesis_event([("dev-0", aggregate(subs))])["Records"])
    assert report.user_records == 7 and report.written == 6 and report.quarantined == 1
    ((_, key),) = s3.objects
    assert key.endswith("-3.json")  # sub-record index in the key


def test_corrupt_aggregate_is_quarantined_whole(executor: ThreadPoolExecutor) -> None:
    dynamo = FakeDynamo()
    ingestor, s3 = make(executor, dynamo)
    data = bytearray(aggregate([SubRecord("a", encode(readings(1)[0]))]))
    data[-1] ^= 1
    report = ingestor.ingest(kinesis_event([("a", bytes(data))])["Records"])
    assert report.quarantined == 1 and report.written == 0
    assert "checksum" in json.loads(next(iter(s3.objects.values())))["reason"]


def test_unprocessed_items_are_retried_until_every_reading_is_stored(executor: ThreadPoolExecutor) -> None:
    fake = FakeDynamo()
    faulty = FaultyDynamo(fake, unprocessed_calls=6)
    ingestor, _ = make(executor, faulty)
    report = ingestor.ingest(event_of(readings(100)))
    assert faulty.injected["unprocessed_calls"] == 6
    assert report.response() == {"batchItemFailures": []}
    assert len(stored(fake)) == 100 and report.retries >= 6


def test_throttling_is_retried_with_backoff(executor: ThreadPoolExecutor) -> None:
    fake = FakeDynamo()
    faulty = FaultyDynamo(fake, throttled_calls=5)
    ingestor, _ = make(executor, faulty)
    report = ingestor.ingest(event_of(readings(60)))
    assert report.response() == {"batchItemFailures": []}
    assert len(stored(fake)) == 60 and len(stored(fake, "LATEST")) == 10


def test_exhausted_retries_report_the_failed_records_for_lambda_to_retry(executor: ThreadPoolExecutor) -> None:
    # Given a table that throttles far more often than the attempt budget allows
    fake = FakeDynamo()
    faulty = FaultyDynamo(fake, throttled_calls=1_000)
    ingestor, _ = make(executor, faulty, attempts=2)
    records = event_of(readings(30))
    # When ingested
    report = ingestor.ingest(records)
    # Then every record is reported (none silently dropped) and nothing claims to be written
    failed = [f["itemIdentifier"] for f in report.response()["batchItemFailures"]]
    assert failed == [r["kinesis"]["sequenceNumber"] for r in records]
    assert report.written == 0 and fake.items == {}


def test_only_the_chunk_that_failed_is_reported(executor: ThreadPoolExecutor) -> None:
    # Given a table that throttles exactly the first call (and we allow one attempt)
    fake = FakeDynamo()
    faulty = FaultyDynamo(fake, throttled_calls=1)
    ingestor, _ = make(executor, faulty, attempts=1)
    records = event_of(readings(50, devices=50))
    report = ingestor.ingest(records)
    # Then 25 records are reported, and LATEST was written only for devices whose reading was stored
    assert len(report.failed_sequence_numbers) == 25
    assert len(stored(fake)) == 25
    assert len(stored(fake, "LATEST")) == 25


class ChunkTracing(FakeDynamo):
    """Slow calls, traced: when each BatchWriteItem ended and each LATEST put started; can throttle chosen items."""

    def __init__(self, throttle_sk: str | None = None) -> None:
        super().__init__(latency_s=0.002)
        self.throttle_sk = throttle_sk
        self.trace: list[tuple[str, set[str]]] = []  # ("written" | "latest", devices)
        self.trace_lock = threading.Lock()

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        ((_, requests),) = kwargs["RequestItems"].items()
        items = [r["PutRequest"]["Item"] for r in requests]
        if any(i["sk"]["S"] == self.throttle_sk for i in items):
            raise client_error("ProvisionedThroughputExceededException", "BatchWriteItem")
        response = super().batch_write_item(**kwargs)
        with self.trace_lock:
            self.trace.append(("written", {i["device_id"]["S"] for i in items}))
        return response

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        with self.trace_lock:
            self.trace.append(("latest", {kwargs["Item"]["device_id"]["S"]}))
        time.sleep(0.002)
        return super().put_item(**kwargs)


def test_each_latest_is_put_only_after_every_chunk_holding_its_device(executor: ThreadPoolExecutor) -> None:
    # Given 7 devices with 1 to 40 readings each, interleaved in the batch (chunks hold several devices, and
    # some devices span chunks)
    dynamo = ChunkTracing()
    ingestor, _ = make(executor, dynamo)
    counts = {f"dev-{d}": 1 + d * 6 for d in range(7)}
    docs = [
        reading(device, "br", 1_793_610_000_000 + i, i)
        for i in range(max(counts.values()))
        for device, n in counts.items()
        if i < n
    ]
    # When ingested with slow calls
    report = ingestor.ingest(event_of(docs))
    # Then every reading and LATEST is written, in the floor of calls
    assert report.written == len(docs) == sum(counts.values()) and report.latest_updated == 7
    assert report.dynamodb_calls == math.ceil(len(docs) / 25) + 7
    # And no device's LATEST put started before the last chunk holding its readings had been written
    for device in counts:
        chunks = [k for k, (kind, devices) in enumerate(dynamo.trace) if kind == "written" and device in devices]
        (put,) = [k for k, (kind, devices) in enumerate(dynamo.trace) if kind == "latest" and device in devices]
        assert chunks and max(chunks) < put, device
    assert {d: stored(dynamo, "LATEST")[(f"DEVICE#{d}", "LATEST")]["seq"] for d in counts} == {
        d: n - 1 for d, n in counts.items()
    }


def test_latest_comes_from_the_newest_reading_stored_when_a_later_chunk_failed(executor: ThreadPoolExecutor) -> None:
    # Given one device with 30 readings (two chunks) whose second chunk, holding its newest, keeps failing
    docs = [reading("dev-1", "br", 1_793_610_000_000 + i, i) for i in range(30)]
    dynamo = ChunkTracing(throttle_sk="R#2026-11-02T09:00:00.029000Z#0000000000000000029")
    ingestor, _ = make(executor, dynamo, attempts=2)
    records = event_of(docs)
    # When ingested
    report = ingestor.ingest(records)
    # Then the second chunk's records are left for Lambda, and LATEST holds the newest reading that was stored
    assert report.written == 25 and report.latest_updated == 1
    assert report.failed_sequence_numbers == [r["kinesis"]["sequenceNumber"] for r in records[25:]]
    assert stored(dynamo, "LATEST")[("DEVICE#dev-1", "LATEST")]["seq"] == 24


def test_failed_quarantine_write_is_retried_not_lost(executor: ThreadPoolExecutor) -> None:
    dynamo = FakeDynamo()
    ingestor, _ = make(executor, dynamo, s3=FakeS3(fail_calls=100), attempts=2)
    records = event_of(readings(3)) + kinesis_event([("x", b"junk")], first_seq=9)["Records"]
    report = ingestor.ingest(records)
    assert report.failed_sequence_numbers == [records[3]["kinesis"]["sequenceNumber"]]
    assert report.written == 3


@pytest.mark.parametrize("code", ["ValidationException", "SerializationException"])
def test_item_refused_by_dynamodb_is_isolated_and_quarantined(executor: ThreadPoolExecutor, code: str) -> None:
    # Given DynamoDB refusing one item (which fails its whole BatchWriteItem call); a malformed attribute value
    # comes back as SerializationException
    dynamo = FakeDynamo(reject=lambda item: item["device_id"]["S"] == "dev-7", reject_code=code)
    ingestor, s3 = make(executor, dynamo)
    report = ingestor.ingest(event_of(readings(40, devices=40)))
    # Then the other 39 are stored and the refused one is quarantined with DynamoDB's reason
    assert report.response() == {"batchItemFailures": []}
    assert len(stored(dynamo)) == 39 and report.quarantined == 1
    assert "rejected by DynamoDB" in json.loads(next(iter(s3.objects.values())))["reason"]


def test_latest_never_moves_backwards(executor: ThreadPoolExecutor) -> None:
    dynamo = FakeDynamo()
    ingestor, _ = make(executor, dynamo)
    newer = reading("dev-1", "br", "2026-11-02T09:00:10Z", 5)
    older = reading("dev-1", "br", "2026-11-02T09:00:00Z", 9)
    same_ts_lower_seq = reading("dev-1", "br", "2026-11-02T09:00:10Z", 4)
    ingestor.ingest(event_of([newer]))
    report = ingestor.ingest(event_of([older, same_ts_lower_seq], first_seq=10))
    assert report.latest_stale == 1 and report.latest_updated == 0
    latest = stored(dynamo, "LATEST")[("DEVICE#dev-1", "LATEST")]
    assert (latest["ts"], latest["seq"]) == ("2026-11-02T09:00:10.000000Z", 5)
    assert len(stored(dynamo)) == 3


def test_replayed_batch_changes_nothing(executor: ThreadPoolExecutor) -> None:
    dynamo = FakeDynamo()
    ingestor, _ = make(executor, dynamo)
    records = event_of(readings(40))
    ingestor.ingest(records)
    before = dict(dynamo.items)
    report = ingestor.ingest(records)
    assert dynamo.items == before
    assert report.latest_stale == 10 and report.latest_updated == 0


def test_the_collector_is_paused_during_a_batch_and_restored_after(executor: ThreadPoolExecutor) -> None:
    # Given an ingest whose DynamoDB reports whether the collector runs while the batch is written
    seen: list[bool] = []

    class Observing(FakeDynamo):
        def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
            seen.append(gc.isenabled())
            return super().batch_write_item(**kwargs)

    ingestor, _ = make(executor, Observing())
    # When batches run one at a time, concurrently, and with the collector already off
    assert gc.isenabled()
    ingestor.ingest(event_of(readings(30)))
    with ThreadPoolExecutor(4) as batches:
        list(batches.map(lambda n: ingestor.ingest(event_of(readings(n))), [40, 60, 80, 100]))
    after_concurrent = gc.isenabled()
    gc.disable()
    try:
        ingestor.ingest(event_of(readings(5)))
        stays_off = not gc.isenabled()
    finally:
        gc.enable()
    # Then it was off while writing, and back as it was after every batch
    assert seen and not any(seen)
    assert after_concurrent and stays_off
