"""Quarantine for records the pipeline cannot accept: their original bytes and the reason, in S3.

S3 rather than SQS: records may be up to 1 MiB (Kinesis' limit) and must keep their exact bytes; S3 holds
them cheaply for as long as the lifecycle says, lets operators list them by day and stage, and is
queryable with Athena. One object per record, with a key derived from the record's shard and sequence
number, so a replayed batch rewrites the same objects instead of adding copies.

The stream consumers quarantine here too (``quarantine_stream``), under their own stage, the stream records they
cannot decode (``devicepipe.streams``): the payload is the record as Lambda delivered it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from devicepipe.fanout import fan_out
from devicepipe.models import format_epoch_s
from devicepipe.observability import logger
from devicepipe.retry import Deadline, Retrier, error_code
from devicepipe.streams import Rejected

PREFIX = "quarantine"


class S3Client(Protocol):
    @property
    def put_object(self) -> Callable[..., Any]: ...


@dataclass(frozen=True)
class QuarantineEntry:
    """One rejected record (or KPL sub-record) with where it came from and why it was refused."""

    stage: str
    reason: str
    payload: bytes
    shard_id: str
    sequence_number: str
    sub_index: int | None
    partition_key: str
    arrival_s: float

    @property
    def key(self) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(self.arrival_s))
        sub = "" if self.sub_index is None else f"-{self.sub_index}"
        return f"{PREFIX}/stage={self.stage}/dt={day}/{self.shard_id}/{self.sequence_number}{sub}.json"

    def document(self) -> bytes:
        """The stored object: metadata plus the original bytes, base64-encoded so any bytes survive."""
        doc = asdict(self)
        doc["payload_base64"] = base64.b64encode(doc.pop("payload")).decode()
        doc["arrived_at"] = format_epoch_s(doc.pop("arrival_s"))
        return json.dumps(doc, separators=(",", ":")).encode()


class S3Quarantine:
    """Writes quarantine entries to a bucket, concurrently and with retries."""

    def __init__(
        self, client: S3Client, bucket: str, executor: Executor, retrier: Retrier, max_in_flight: int = 32
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.executor = executor
        self.retrier = retrier
        self.max_in_flight = max_in_flight

    def put(self, entries: Sequence[QuarantineEntry]) -> dict[int, str]:
        """Store every entry; returns ``{index: error}`` for the ones that could not be stored."""
        failed: dict[int, str] = {}
        for i, error in enumerate(fan_out(self.executor, self.max_in_flight, self._put_one, entries)):
            if error:
                failed[i] = error
        return failed

    def _put_one(self, entry: QuarantineEntry) -> str:
        def attempt() -> bool:
            self.client.put_object(
                Bucket=self.bucket, Key=entry.key, Body=entry.document(), ContentType="application/json"
            )
            return True

        try:
            outcome = self.retrier.run(attempt)
        except Exception as exc:
            logger.exception("quarantine write failed", extra={"key": entry.key, "code": error_code(exc)})
            return f"{error_code(exc) or type(exc).__name__}: {exc}"
        return "" if outcome.done else outcome.error


def stream_quarantine(s3: S3Client, bucket: str, max_in_flight: int = 16) -> tuple[S3Quarantine, Deadline]:
    """A stream consumer's quarantine, with the deadline its handler sets per invocation."""
    deadline = Deadline(lambda: 2**31)  # replaced per invocation by the context's remaining time
    executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="quarantine")
    return S3Quarantine(s3, bucket, executor, Retrier(deadline=deadline), max_in_flight), deadline


def quarantine_stream(store: S3Quarantine, stage: str, rejected: Sequence[Rejected]) -> set[str]:
    """Store the stream records a consumer refused, with their reasons; returns the sequence numbers of those
    that could not be stored, for the partial batch response ("" for a record without one)."""
    if not rejected:
        return set()
    entries = [stream_entry(stage, r) for r in rejected]
    for entry in entries:
        logger.warning(
            "stream record quarantined",
            extra={"stage": stage, "reason": entry.reason, "sequence_number": entry.sequence_number},
        )
    return {rejected[i].sequence_number for i in store.put(entries)}


def stream_entry(stage: str, rejected: Rejected) -> QuarantineEntry:
    """A refused DynamoDB stream record as a quarantine entry.

    Lambda's DynamoDB events name no shard: the stream's label (the end of its ARN) stands in for it, and the key
    ends in the sequence number (unique within a stream), else the event id, else a digest of the record, so a
    replayed batch rewrites the same object.
    """
    record = _mapping(rejected.record)
    ddb = _mapping(record.get("dynamodb"))
    created = ddb.get("ApproximateCreationDateTime")
    payload = json.dumps(rejected.record, separators=(",", ":"), sort_keys=True, default=str).encode()
    return QuarantineEntry(
        stage=stage,
        reason=rejected.reason,
        payload=payload,
        shard_id=str(record.get("eventSourceARN", "")).rpartition("/stream/")[2] or "stream",
        sequence_number=rejected.sequence_number
        or str(record.get("eventID") or hashlib.sha256(payload).hexdigest()[:32]),
        sub_index=None,
        partition_key=str(_mapping(_mapping(ddb.get("Keys")).get("pk")).get("S", "")),
        arrival_s=float(created) if isinstance(created, int | float) else time.time(),
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
