"""Quarantine for records the pipeline cannot accept: their original bytes and the reason, in S3.

S3 rather than SQS: records may be up to 1 MiB (Kinesis' limit) and must keep their exact bytes; S3 holds
them cheaply for as long as the lifecycle says, lets operators list them by day and stage, and is
queryable with Athena. One object per record, with a key derived from the record's shard and sequence
number, so a replayed batch rewrites the same objects instead of adding copies.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from devicepipe.fanout import fan_out
from devicepipe.models import format_epoch_s
from devicepipe.observability import logger
from devicepipe.retry import Retrier, error_code

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
