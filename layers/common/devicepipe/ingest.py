"""Ingest: a Kinesis batch -> validated readings -> DynamoDB (reading items, then LATEST per device).

Failure rules (docs/architecture.md, "Failures"):
- a record that breaks the contract is quarantined with its reason and never retried;
- a transient failure (throttling, 5xx, exhausted ``UnprocessedItems``, a quarantine write that failed)
  reports the record in ``batchItemFailures``; Lambda checkpoints before the lowest one and replays from
  there, which is safe because every write is idempotent by key.
"""

from __future__ import annotations

import binascii
import gc
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from devicepipe.batch_failures import BatchItemFailures
from devicepipe.config import IngestSettings
from devicepipe.dynamo import DynamoClient, DynamoWriter, Item, WriteResult, latest_item, reading_item
from devicepipe.kpl import AggregationError, deaggregate, is_aggregated
from devicepipe.models import AttributeValue, InvalidReading, Reading, ReadingFields, format_epoch_s, reading_fields
from devicepipe.observability import logger
from devicepipe.quarantine import QuarantineEntry, S3Client, S3Quarantine
from devicepipe.retry import Retrier

STAGE = "ingest"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for all records: json.loads with keyword arguments would build a new decoder per call.
_decoder = json.JSONDecoder(parse_constant=_reject_constant)


class _CollectorPause:
    """Pauses Python's cyclic garbage collector while at least one batch is being ingested.

    A 1,000-record batch allocates about 20,000 containers (items and their attribute values) that all live
    until the batch is written, and the collector would trace them again and again: about 4% of the ingest's
    CPU in `make bench`. The batch creates no reference cycles worth collecting, reference counting frees it
    afterwards as usual, and the collector resumes (if it was enabled) when the last concurrent batch ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._resume:
                gc.enable()


_collector_paused = _CollectorPause()


@dataclass
class IngestReport:
    """Counts for metrics and logs, and the records Lambda must retry."""

    records: int = 0
    user_records: int = 0
    readings: int = 0
    duplicates: int = 0
    written: int = 0
    quarantined: int = 0
    latest_updated: int = 0
    latest_stale: int = 0
    retries: int = 0
    dynamodb_calls: int = 0
    failed_sequence_numbers: list[str] = field(default_factory=list)

    @property
    def failures(self) -> BatchItemFailures:
        return BatchItemFailures(tuple(self.failed_sequence_numbers))

    def response(self) -> dict[str, list[dict[str, str]]]:
        """The partial batch response (``ReportBatchItemFailures``)."""
        return self.failures.to_response()


def build_ingestor(
    settings: IngestSettings, dynamodb: DynamoClient, s3: S3Client, executor: Executor, retrier: Retrier
) -> Ingestor:
    """Wire an ``Ingestor`` from clients: both adapters share the executor (bounded concurrency) and retrier."""
    return Ingestor(
        settings,
        DynamoWriter(dynamodb, settings.table_name, executor, retrier, settings.max_concurrency),
        S3Quarantine(s3, settings.quarantine_bucket, executor, retrier, settings.max_concurrency),
    )


class Ingestor:
    """Runs one Kinesis batch through validation and the writes.

    Parameters
    ----------
    settings
        Region, TTL and limits.
    writer
        DynamoDB writes (real client or a fake behind the same interface).
    quarantine
        Where rejected records go.
    clock
        Epoch seconds, for the future-timestamp rule.
    """

    def __init__(
        self,
        settings: IngestSettings,
        writer: DynamoWriter,
        quarantine: S3Quarantine,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.quarantine = quarantine
        self.clock = clock

    def ingest(self, records: Sequence[dict[str, Any]]) -> IngestReport:
        """Process the ``Records`` of a Kinesis event; returns the report (see ``IngestReport.response``)."""
        with _collector_paused:
            return self._ingest(records)

    def _ingest(self, records: Sequence[dict[str, Any]]) -> IngestReport:
        report = IngestReport(records=len(records))
        rejected: list[tuple[int, int | None, bytes, str]] = []  # (record index, sub-index, bytes, reason)
        # (device, version) -> (reading fields, record index, sub-index): identical readings become one write.
        unique: dict[tuple[str, str], tuple[ReadingFields, int, int | None]] = {}
        duplicated_in: dict[tuple[str, str], list[int]] = {}  # key -> every record index that carried it
        now_s = self.clock()
        settings = self.settings
        max_bytes, max_skew_s = settings.max_reading_bytes, settings.max_clock_skew_s
        # Attribute values shared by many items (never modified in place): one region, and one arrival time
        # for each run of records that Kinesis accepted in the same millisecond.
        region = {"S": settings.region}
        ttl_s = settings.reading_ttl_days * 86_400
        last_arrival: object = None
        ingested_at: AttributeValue = {}
        loads = orjson.loads
        # The hot loop: kept flat, since its cost per record is what `make bench` compares with json.loads.
        for index, record in enumerate(records):
            kinesis = record["kinesis"]
            arrival = kinesis.get("approximateArrivalTimestamp", now_s)
            if arrival != last_arrival:
                last_arrival, ingested_at = arrival, {"S": format_epoch_s(float(arrival))}
            try:
                data = binascii.a2b_base64(kinesis["data"])
            except (binascii.Error, TypeError) as exc:
                rejected.append((index, None, str(kinesis["data"]).encode(), f"data is not base64: {exc}"))
                continue
            subs: Sequence[tuple[int | None, bytes]] = ((None, data),)
            if is_aggregated(data):
                try:
                    subs = [(i, sub.data) for i, sub in enumerate(deaggregate(data))]
                except AggregationError as exc:
                    rejected.append((index, None, data, str(exc)))
                    continue
            for sub_index, payload in subs:
                try:  # the common case, with orjson (False: its floats may be rounded integers); the rest: _parse
                    fields = (
                        reading_fields(loads(payload), now_s, max_skew_s, False) if len(payload) <= max_bytes else None
                    )
                except (orjson.JSONDecodeError, InvalidReading):
                    fields = None
                if fields is None:
                    outcome = self._parse(payload, now_s)
                    if type(outcome) is str:
                        rejected.append((index, sub_index, payload, outcome))
                        continue
                    fields = cast(ReadingFields, outcome)
                device_id, _, _, _, epoch_s, version, attributes = fields
                reading_item(attributes, epoch_s, region, ingested_at, ttl_s)
                key = (device_id, version)
                previous = unique.get(key)
                if previous is not None:
                    # Same key twice in a batch: the later record wins, as it would in sequence.
                    duplicated_in.setdefault(key, [previous[1]]).append(index)
                unique[key] = (fields, index, sub_index)
        report.user_records = len(unique) + len(rejected) + sum(len(v) - 1 for v in duplicated_in.values())
        report.readings = len(unique)
        report.duplicates = report.user_records - len(unique) - len(rejected)

        failed: dict[int, str] = {}  # record index -> why it must be retried
        entries = list(unique.items())
        quarantine_future = (
            self.writer.executor.submit(self._quarantine, records, rejected, failed) if rejected else None
        )
        written = self._write(entries, duplicated_in, report, failed)
        for i, error in written.failed.items():
            key, (_, index, _) = entries[i]
            for src in duplicated_in.get(key, [index]):
                failed.setdefault(src, error)
        if quarantine_future is not None:
            quarantine_future.result()
        report.quarantined = len(rejected)
        if written.rejected:
            refused = [
                (entries[i][1][1], entries[i][1][2], self._payload(records, entries[i][1][1], entries[i][1][2]), why)
                for i, why in written.rejected.items()
            ]
            self._quarantine(records, refused, failed)
            report.quarantined += len(refused)

        report.written = len(entries) - len(written.failed) - len(written.rejected)
        report.failed_sequence_numbers = [records[i]["kinesis"]["sequenceNumber"] for i in sorted(failed)]
        if failed:
            logger.warning(
                "records left for Lambda to retry",
                extra={"failed": len(failed), "first_error": failed[min(failed)]},
            )
        return report

    def _parse(self, payload: bytes, now_s: float) -> ReadingFields | str:
        """The slow path for a record the fast one refused: the reading, or why the record is refused.

        Decodes with the standard parser, which reads every number exactly (orjson rounds integers beyond
        64 bits to floats, so the fast path sends readings with big floats here) and words errors better.
        """
        if len(payload) > self.settings.max_reading_bytes:
            return f"record is {len(payload)} bytes, over the {self.settings.max_reading_bytes}-byte limit"
        try:
            obj = _decoder.decode(payload.decode())
        except UnicodeDecodeError:
            return "not UTF-8 text"
        except ValueError as exc:
            return f"invalid JSON: {exc}"
        except RecursionError:
            return "invalid JSON: nested too deeply"
        try:
            return reading_fields(obj, now_s, self.settings.max_clock_skew_s, True)
        except InvalidReading as exc:
            return exc.reason

    def _quarantine(
        self,
        records: Sequence[dict[str, Any]],
        rejected: list[tuple[int, int | None, bytes, str]],
        failed: dict[int, str],
    ) -> None:
        """Store rejected records; one whose quarantine write fails is left for Lambda to retry."""
        entries = []
        for index, sub_index, payload, reason in rejected:
            record, kinesis = records[index], records[index]["kinesis"]
            logger.warning(
                "record quarantined",
                extra={"reason": reason, "sequence_number": kinesis["sequenceNumber"], "sub_index": sub_index},
            )
            entries.append(
                QuarantineEntry(
                    STAGE,
                    reason,
                    payload,
                    record.get("eventID", "").split(":", 1)[0] or "shard-unknown",
                    kinesis["sequenceNumber"],
                    sub_index,
                    kinesis.get("partitionKey", ""),
                    float(kinesis.get("approximateArrivalTimestamp", 0.0)),
                )
            )
        for i, error in self.quarantine.put(entries).items():
            failed.setdefault(rejected[i][0], f"quarantine write failed: {error}")

    @staticmethod
    def _payload(records: Sequence[dict[str, Any]], index: int, sub_index: int | None) -> bytes:
        """The original bytes of a user record (for the rare reading that DynamoDB itself refuses)."""
        data = binascii.a2b_base64(records[index]["kinesis"]["data"])
        return data if sub_index is None else deaggregate(data)[sub_index].data

    def _write(
        self,
        entries: list[tuple[tuple[str, str], tuple[ReadingFields, int, int | None]]],
        duplicated_in: dict[tuple[str, str], list[int]],
        report: IngestReport,
        failed: dict[int, str],
    ) -> WriteResult:
        """Every reading, then one conditional LATEST write per device from its newest reading that was stored.

        Returns the readings' result; LATEST writes that failed are added to ``failed`` here.
        """
        by_device: dict[str, list[int]] = {}
        for i, ((device, _), _) in enumerate(entries):
            group = by_device.get(device)
            if group is None:
                by_device[device] = [i]
            else:
                group.append(i)
        chosen: dict[int, int] = {}  # device group -> index into entries of the reading its LATEST comes from

        def latest_for(group: int, stored: list[int]) -> Item:
            newest = stored[0]
            for i in stored:
                if entries[i][0][1] > entries[newest][0][1]:
                    newest = i
            chosen[group] = newest
            return latest_item(Reading(*entries[newest][1][0]))

        written, latest = self.writer.write_with_latest(
            [fields[6] for _, (fields, _, _) in entries], list(by_device.values()), latest_for
        )
        report.retries += written.retries + latest.retries
        report.dynamodb_calls += written.calls + latest.calls
        report.latest_stale = len(latest.stale)
        report.latest_updated = len(chosen) - len(latest.stale) - len(latest.failed) - len(latest.rejected)
        for device_group, error in {**latest.failed, **latest.rejected}.items():
            key, (_, index, _) = entries[chosen[device_group]]
            for src in duplicated_in.get(key, [index]):
                failed.setdefault(src, f"LATEST update failed: {error}")
        return written
