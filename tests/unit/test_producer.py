"""Producer batching, retries and input handling with an in-memory Kinesis."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest

from devicepipe.kpl import deaggregate, is_aggregated
from devicepipe.retry import Backoff
from devicepipe_tools.events import encode, reading
from devicepipe_tools.producer import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    Entry,
    InvalidInput,
    Producer,
    Progress,
    ProgressLine,
    read_readings,
    simulate,
)


class MemoryKinesis:
    """PutRecords into a list; shards split the hash space evenly."""

    def __init__(self, shards: int = 4) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.records: list[dict[str, Any]] = []
        self.shards = shards
        self.lock = threading.Lock()

    def describe_stream_summary(self, **_: Any) -> dict[str, Any]:
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}

    def list_shards(self, **_: Any) -> dict[str, Any]:
        step = 2**128 // self.shards
        return {
            "Shards": [
                {
                    "ShardId": f"shardId-{i:012d}",
                    "HashKeyRange": {
                        "StartingHashKey": str(i * step),
                        "EndingHashKey": str(2**128 - 1 if i == self.shards - 1 else (i + 1) * step - 1),
                    },
                    "SequenceNumberRange": {"StartingSequenceNumber": "1"},
                }
                for i in range(self.shards)
            ]
        }

    def put_records(self, **kwargs: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(kwargs["Records"])
            self.records += kwargs["Records"]
        return {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "x"} for _ in kwargs["Records"]]}


def entries(n: int, size: int = 0) -> list[Entry]:
    return [
        Entry(encode({**reading(f"d{i % 7}", "b", 1_793_610_000_000 + i, i), "pad": "x" * size}), f"d{i % 7}", [str(i)])
        for i in range(n)
    ]


def test_batches_respect_the_record_count_limit() -> None:
    kinesis = MemoryKinesis()
    progress = Producer(kinesis, "s", lambda *_: None).send(entries(1_234))
    assert progress.sent == 1_234
    assert max(len(c) for c in kinesis.calls) <= MAX_BATCH_RECORDS
    assert len(kinesis.calls) == 3


def test_batches_respect_the_byte_limit() -> None:
    kinesis = MemoryKinesis()
    Producer(kinesis, "s", lambda *_: None).send(entries(60, size=200_000))
    sizes = [sum(len(r["Data"]) + len(r["PartitionKey"]) for r in c) for c in kinesis.calls]
    assert max(sizes) <= MAX_BATCH_BYTES
    assert len(kinesis.records) == 60


def test_kpl_aggregation_packs_records_per_shard_and_keeps_every_one() -> None:
    kinesis = MemoryKinesis()
    producer = Producer(kinesis, "s", lambda *_: None, aggregate=True)
    producer.check_stream()
    source = entries(2_000)
    progress = producer.send(source)
    assert progress.sent == 2_000
    assert len(kinesis.records) < 100  # aggregated, far fewer Kinesis records
    unpacked = []
    for record in kinesis.records:
        subs = deaggregate(record["Data"]) if is_aggregated(record["Data"]) else []
        # every sub-record of an aggregate maps to the same shard as the aggregate's own key
        shards = {producer._shard_of(s.partition_key) for s in subs}
        assert shards == {producer._shard_of(record["PartitionKey"])}
        unpacked += [s.data for s in subs]
    assert sorted(unpacked) == sorted(e.data for e in source)


def test_throttled_calls_are_retried_until_accepted() -> None:
    class Throttling(MemoryKinesis):
        def put_records(self, **kwargs: Any) -> dict[str, Any]:
            from devicepipe_tools.fakes import client_error

            if len(self.calls) < 3:
                self.calls.append([])
                raise client_error("ProvisionedThroughputExceededException", "PutRecords")
            return super().put_records(**kwargs)

    kinesis = Throttling()
    waits: list[float] = []
    producer = Producer(
        kinesis, "s", lambda *_: None, max_in_flight=1, sleep=waits.append, backoff=Backoff(base_s=0.01)
    )
    progress = producer.send(entries(10))
    assert (progress.sent, progress.failed, len(waits)) == (10, 0, 3)


def test_non_retryable_errors_fail_the_batch_with_the_reason() -> None:
    class Denied(MemoryKinesis):
        def put_records(self, **kwargs: Any) -> dict[str, Any]:
            from devicepipe_tools.fakes import client_error

            raise client_error("AccessDeniedException", "PutRecords")

    failed: list[tuple[str, str]] = []
    progress = Producer(Denied(), "s", lambda e, why: failed.append((e.refs[0], why))).send(entries(3))
    assert progress.failed == 3
    assert all("AccessDeniedException" in why for _, why in failed)


def test_input_lines_are_validated_with_line_numbers() -> None:
    good = json.dumps(reading("d1", "b", 1_793_610_000_000))
    lines = io.StringIO(f"{good}\n\nnot json\n{json.dumps({'device_id': 'd2'})}\n{good}\n")
    invalid: list[tuple[int, str]] = []
    out = list(read_readings(lines, lambda n, why: invalid.append((n, why))))
    assert [e.refs for e in out] == [["line 1"], ["line 5"]]
    assert [n for n, _ in invalid] == [3, 4]
    assert invalid[1][1] == "branch_id: required"
    with pytest.raises(InvalidInput, match="line 3"):
        list(read_readings(io.StringIO(f"{good}\n\nnot json\n"), lambda *_: None, strict=True))


def test_simulator_spreads_devices_over_branches_with_increasing_seq() -> None:
    docs = list(simulate(devices=5, branches=2, count=20, seed=1))
    assert len(docs) == 20
    assert {d["device_id"] for d in docs} == {f"dev-{i:05d}" for i in range(5)}
    assert {d["branch_id"] for d in docs} == {"branch-000", "branch-001"}
    seqs = [d["seq"] for d in docs if d["device_id"] == "dev-00003"]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_progress_line_shows_counts_rate_and_errors() -> None:
    progress = Progress()
    progress.add(sent=50, failed=2, retried=7)
    line = ProgressLine(progress, total=104).render()
    assert line.startswith("[" + "#" * 15 + "." * 15 + "] 52/104")  # 52/104 of 30 cells
    assert "errors 2" in line and "retried 7" in line and "/s" in line


class Unreachable(MemoryKinesis):
    """A region whose endpoint does not answer."""

    def put_records(self, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import EndpointConnectionError

        self.calls.append(kwargs["Records"])
        raise EndpointConnectionError(endpoint_url="https://kinesis.us-east-1.amazonaws.com")


def test_failover_sends_to_the_next_region_and_skips_the_failed_one_for_a_while() -> None:
    # Given the first region unreachable and a healthy second one
    down, healthy = Unreachable(), MemoryKinesis()
    producer = Producer(
        down,
        "us-stream",
        lambda *_: None,
        max_in_flight=1,
        failover_after_s=0.05,
        backoff=Backoff(base_s=0.01, cap_s=0.01),
        fallbacks=[(healthy, "eu-stream")],
    )
    # When readings are produced
    progress = producer.send(entries(1_200))
    # Then every reading went to the second region exactly once, and only the first batch tried the first
    assert (progress.sent, progress.failed) == (1_200, 0)
    assert sorted(r["Data"] for r in healthy.records) == sorted(e.data for e in entries(1_200))
    assert progress.failed_over == 500  # the first batch; later ones skipped the region while it cooled down
    assert len(down.calls) >= 1 and all(len(c) == 500 for c in down.calls)


def test_when_every_region_fails_the_reasons_of_each_are_kept() -> None:
    failed: list[str] = []
    producer = Producer(
        Unreachable(),
        "us-stream",
        lambda e, why: failed.append(why),
        failover_after_s=0.02,
        backoff=Backoff(base_s=0.01, cap_s=0.01),
        fallbacks=[(Unreachable(), "eu-stream")],
    )
    progress = producer.send(entries(3))
    assert progress.failed == 3
    assert failed[0].startswith("us-stream: ") and "; eu-stream: " in failed[0]
