"""Ingest: a Kinesis batch -> validated readings -> DynamoDB (reading items, then LATEST per device).

Failure rules (DESIGN.md "Failures"):
- a record that breaks the contract is quarantined with its reason and never retried;
- a transient failure (throttling, 5xx, exhausted ``UnprocessedItems``, a quarantine write that failed)
  reports the record in ``batchItemFailures``; Lambda checkpoints before the lowest one and replays from
  there, which is safe because every write is idempotent by key.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devicepipe.config import IngestSettings
from devicepipe.dynamo import DynamoWriter, Item, WriteResult, latest_item, reading_item
from devicepipe.kpl import AggregationError, deaggregate, is_aggregated
from devicepipe.models import InvalidReading, Reading, format_epoch_s, parse_reading
from devicepipe.observability import logger
from devicepipe.quarantine import QuarantineEntry, S3Quarantine

STAGE = "ingest"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for all records: json.loads with keyword arguments would build a new decoder per call.
_decoder = json.JSONDecoder(parse_constant=_reject_constant)


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

    def response(self) -> dict[str, list[dict[str, str]]]:
        """The partial batch response (``ReportBatchItemFailures``)."""
        return {"batchItemFailures": [{"itemIdentifier": s} for s in self.failed_sequence_numbers]}


@dataclass(slots=True)
class _Source:
    """Where a user record came from in the Kinesis batch."""

    index: int
    sequence_number: str
    shard_id: str
    partition_key: str
    arrival_s: float


@dataclass(slots=True)
class _Unique:
    """One reading to write, with the records that carried it (more than one when duplicated)."""

    item: Item
    reading: Reading
    payload: bytes
    sub_index: int | None
    sources: list[_Source]


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
        report = IngestReport(records=len(records))
        rejected: list[QuarantineEntry] = []
        rejected_sources: list[_Source] = []
        # (pk, sk) -> reading: identical readings in one batch become one write.
        unique: dict[tuple[str, str], _Unique] = {}
        now_s = self.clock()
        s = self.settings
        for index, record in enumerate(records):
            kinesis = record["kinesis"]
            source = _Source(
                index,
                kinesis["sequenceNumber"],
                record.get("eventID", "").split(":", 1)[0] or "shard-unknown",
                kinesis.get("partitionKey", ""),
                float(kinesis.get("approximateArrivalTimestamp", now_s)),
            )
            ingested_at = format_epoch_s(source.arrival_s)
            for sub_index, payload, reading_or_reason in self._decode(kinesis["data"], now_s):
                report.user_records += 1
                if isinstance(reading_or_reason, str):
                    rejected.append(self._entry(source, sub_index, payload, reading_or_reason))
                    rejected_sources.append(source)
                    continue
                reading = reading_or_reason
                key = (reading.pk, reading.sk)
                item = reading_item(
                    reading, origin_region=s.region, ingested_at=ingested_at, ttl_days=s.reading_ttl_days
                )
                seen = unique.get(key)
                if seen is None:
                    unique[key] = _Unique(item, reading, payload, sub_index, [source])
                else:
                    # Same key twice in a batch: the later record wins, as it would in sequence.
                    report.duplicates += 1
                    unique[key] = _Unique(item, reading, payload, sub_index, [*seen.sources, source])
        report.readings = len(unique)

        failed: dict[int, str] = {}  # record index -> why it must be retried
        entries = list(unique.values())
        quarantine_future = self.writer.executor.submit(self.quarantine.put, rejected) if rejected else None
        written = self.writer.write_readings([e.item for e in entries])
        report.retries += written.retries
        report.dynamodb_calls += written.calls
        for i, error in written.failed.items():
            for src in entries[i].sources:
                failed.setdefault(src.index, error)
        if quarantine_future is not None:
            for i, error in quarantine_future.result().items():
                failed.setdefault(rejected_sources[i].index, f"quarantine write failed: {error}")
        report.quarantined = len(rejected)
        if written.rejected:
            self._quarantine_refused(entries, written.rejected, report, failed)

        self._update_latest(entries, written, report, failed)
        report.written = len(entries) - len(written.failed) - len(written.rejected)
        report.failed_sequence_numbers = [records[i]["kinesis"]["sequenceNumber"] for i in sorted(failed)]
        if failed:
            logger.warning(
                "records left for Lambda to retry",
                extra={"failed": len(failed), "first_error": failed[min(failed)]},
            )
        return report

    def _decode(self, data_b64: str, now_s: float) -> list[tuple[int | None, bytes, Reading | str]]:
        """A record's user records as ``(sub_index, bytes, Reading or rejection reason)``."""
        try:
            data = binascii.a2b_base64(data_b64)
        except (binascii.Error, TypeError) as exc:
            return [(None, str(data_b64).encode(), f"data is not base64: {exc}")]
        if is_aggregated(data):
            try:
                subs = deaggregate(data)
            except AggregationError as exc:
                return [(None, data, str(exc))]
            return [(i, sub.data, self._parse(sub.data, now_s)) for i, sub in enumerate(subs)]
        return [(None, data, self._parse(data, now_s))]

    def _parse(self, payload: bytes, now_s: float) -> Reading | str:
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
            return parse_reading(obj, now_s=now_s, max_skew_s=self.settings.max_clock_skew_s)
        except InvalidReading as exc:
            return exc.reason

    def _entry(self, source: _Source, sub_index: int | None, payload: bytes, reason: str) -> QuarantineEntry:
        logger.warning(
            "record quarantined",
            extra={"reason": reason, "sequence_number": source.sequence_number, "sub_index": sub_index},
        )
        return QuarantineEntry(
            STAGE,
            reason,
            payload,
            source.shard_id,
            source.sequence_number,
            sub_index,
            source.partition_key,
            source.arrival_s,
        )

    def _quarantine_refused(
        self,
        entries: list[_Unique],
        refused: dict[int, str],
        report: IngestReport,
        failed: dict[int, str],
    ) -> None:
        """Readings that passed validation but that DynamoDB refused: quarantine them like bad records."""
        extra: list[QuarantineEntry] = []
        sources: list[_Source] = []
        for i, reason in refused.items():
            entry = entries[i]
            extra.append(self._entry(entry.sources[-1], entry.sub_index, entry.payload, reason))
            sources.append(entry.sources[-1])
        for i, error in self.quarantine.put(extra).items():
            failed.setdefault(sources[i].index, f"quarantine write failed: {error}")
        report.quarantined += len(extra)

    def _update_latest(
        self,
        entries: list[_Unique],
        written: WriteResult,
        report: IngestReport,
        failed: dict[int, str],
    ) -> None:
        """One conditional LATEST write per device, from its newest reading that was stored."""
        newest: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if i in written.failed or i in written.rejected:
                continue
            best = newest.get(entry.reading.device_id)
            if best is None or entry.reading.version > entries[best].reading.version:
                newest[entry.reading.device_id] = i
        chosen = list(newest.values())
        latest = self.writer.put_latest([latest_item(entries[i].reading, entries[i].item) for i in chosen])
        report.retries += latest.retries
        report.dynamodb_calls += latest.calls
        report.latest_stale = len(latest.stale)
        report.latest_updated = len(chosen) - len(latest.stale) - len(latest.failed) - len(latest.rejected)
        for j, error in {**latest.failed, **latest.rejected}.items():
            for src in entries[chosen[j]].sources:
                failed.setdefault(src.index, f"LATEST update failed: {error}")
