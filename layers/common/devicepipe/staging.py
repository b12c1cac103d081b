"""Staging readings to S3 for the warehouse: one gzip JSON-lines object per stream batch.

Key: ``readings/origin=<region>/dt=YYYY-MM-DD/hour=HH/<first-seq>-<last-seq>.jsonl.gz``, from the batch's
first record's creation time and the sequence numbers of the batch as delivered, so a retried batch rewrites
the same key with the same bytes (gzip with a fixed mtime). Lambda's DynamoDB stream events carry no shard id;
sequence numbers are unique within a stream, which is enough.

Each line is one reading, flat, with lower-case keys for Redshift ``COPY ... FORMAT JSON 'auto'``:
``device_id, branch_id, ts, seq, metrics, extra, origin_region, ingested_at`` (``metrics`` and ``extra``,
the reading's other fields, load into SUPER columns). The items come checked by ``devicepipe.streams`` (no column
is null) and numbers are written as stored, digit for digit: a ``Decimal`` becomes a raw JSON number, never a float.

Object sizes: one object per invocation, so its size is set by StagerEventSourceMapping's batching (template.yaml,
and ``make bench`` for the objects per hour and their size at the design load).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from devicepipe.retry import Retrier, error_code
from devicepipe.streams import Change, exact_number

PREFIX = "readings"
_COLUMNS = ("device_id", "branch_id", "ts", "seq", "metrics", "origin_region", "ingested_at")
_NOT_STAGED = frozenset({"pk", "sk", "expires_at", "latest_branch", "latest_at", *_COLUMNS})


@dataclass
class StageResult:
    staged: int = 0
    skipped: int = 0  # other regions' writes, LATEST items, removals
    key: str = ""
    bytes: int = 0
    puts: int = 0
    error: str = ""


def row(item: dict[str, Any]) -> dict[str, Any]:
    """One reading item as the warehouse row."""
    out = {c: item.get(c) for c in _COLUMNS}
    out["extra"] = {k: v for k, v in item.items() if k not in _NOT_STAGED}
    return out


def object_key(region: str, first: Change, last_sequence: str) -> str:
    t = time.gmtime(first.created_s)
    return (
        f"{PREFIX}/origin={region}/dt={t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}/hour={t.tm_hour:02d}/"
        f"{first.sequence_number}-{last_sequence}.jsonl.gz"
    )


class Stager:
    """Writes a batch's own-region readings to S3 in one PUT (retried with backoff)."""

    def __init__(self, s3: Any, bucket: str, region: str, retrier: Retrier) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.region = region
        self.retrier = retrier

    def stage(self, batch: Sequence[Change]) -> StageResult:
        """Stage the batch; ``error`` is set (and nothing counted as staged) when the PUT failed."""
        result = StageResult()
        own = [
            c.new
            for c in batch
            if c.event_name != "REMOVE"
            and c.is_reading
            and c.new is not None
            # Global tables stream every region's writes in every region: stage only our own, so the
            # warehouse (fed from both regions) gets each reading once.
            and c.new.get("origin_region") == self.region
        ]
        result.skipped = len(batch) - len(own)
        if not own:
            return result
        lines = b"".join(orjson.dumps(row(item), default=exact_number) + b"\n" for item in own)
        body = gzip.compress(lines, mtime=0)
        result.key = object_key(self.region, batch[0], batch[-1].sequence_number)
        result.bytes = len(body)

        def attempt() -> bool:
            result.puts += 1
            self.s3.put_object(Bucket=self.bucket, Key=result.key, Body=body, ContentType="application/gzip")
            return True

        try:
            outcome = self.retrier.run(attempt)
        except Exception as exc:
            result.error = f"{error_code(exc) or type(exc).__name__}: {exc}"
            return result
        if not outcome.done:
            result.error = outcome.error
            return result
        result.staged = len(own)
        return result
