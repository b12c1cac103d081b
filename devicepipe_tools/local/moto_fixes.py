"""Fixes to moto that the local stack needs, applied in the process that runs moto's server.

- moto's Kinesis shard assigns a sequence number as "last one + 1" without a lock (its own comment says it is
  not safe for concurrency), so concurrent PutRecords calls, which any real producer makes, overwrite each
  other's records; moto's DynamoDB stream shard numbers records the same way. Each shard is serialised here
  by a lock of its own.
- moto's Kinesis shard finds the last sequence number and the records after an iterator by scanning every
  record the shard holds, so puts and polls slow down as the stream fills (quadratic over a demo). Sequence
  numbers are consecutive integers there, so both become direct lookups.
- DynamoDB Streams writes no record for a write that changes nothing (AWS documents this); moto writes a
  MODIFY. The pipeline relies on it (a replayed ingest batch must not be staged again), so the fix skips them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

_MARK = "__devicepipe_fixed__"
_creation = threading.Lock()


def _shard_lock(shard: Any) -> threading.RLock:
    lock = shard.__dict__.get("_devicepipe_lock")
    if lock is None:
        with _creation:
            lock = shard.__dict__.setdefault("_devicepipe_lock", threading.RLock())
    return lock  # type: ignore[no-any-return]


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _shard_lock(self):
            return method(self, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _kinesis_put_record(self: Any, partition_key: str, data: str, explicit_hash_key: str) -> str:
    from moto.kinesis.models import Record

    sequence_number = next(reversed(self.records), 0) + 1
    self.records[sequence_number] = Record(partition_key, data, sequence_number, explicit_hash_key)
    return str(sequence_number)


def _kinesis_get_records(self: Any, last_sequence_id: str, limit: int | None) -> tuple[list[Any], int, int]:
    last = int(last_sequence_id)
    newest = next(reversed(self.records), 0)
    results: list[Any] = []
    seq = last + 1
    while seq <= newest and (limit is None or len(results) < limit):
        record = self.records.get(seq)
        if record is not None:
            results.append(record)
            last = seq
        seq += 1
    behind_ms = int((self.records[newest].created_at - results[-1].created_at) * 1000) if results else 0
    return results, last, behind_ms


def _stream_add(original: Callable[..., Any]) -> Callable[..., Any]:
    def add(self: Any, old: Any, new: Any) -> None:
        if old is not None and new is not None and old.to_json() == new.to_json():
            return  # unchanged item: DynamoDB Streams records nothing
        original(self, old, new)

    return add


def apply() -> None:
    """Idempotent: patch moto's Kinesis and DynamoDB stream shards."""
    from moto.dynamodb.models.table import StreamShard
    from moto.kinesis.models import Shard

    if getattr(Shard.put_record, _MARK, False):
        return
    Shard.put_record = _serialised(_kinesis_put_record)  # type: ignore[method-assign]
    Shard.get_records = _serialised(_kinesis_get_records)  # type: ignore[method-assign]
    for name in ("get_min_sequence_number", "get_max_sequence_number"):
        setattr(Shard, name, _serialised(getattr(Shard, name)))
    StreamShard.add = _serialised(_stream_add(StreamShard.add))  # type: ignore[method-assign]
    StreamShard.get = _serialised(StreamShard.get)  # type: ignore[method-assign]
