"""Fixes to moto that the local stack needs, applied in the process that runs moto's server.

- moto's Kinesis shard assigns a sequence number as "last one + 1" without a lock (its own comment says it is
  not safe for concurrency), so concurrent PutRecords calls, which any real producer makes, overwrite each
  other's records; reads iterate the same dict while it grows. moto's DynamoDB stream shard numbers records
  the same way. Every shard access is serialised here.
- DynamoDB Streams writes no record for a write that changes nothing (AWS documents this); moto writes a
  MODIFY. The pipeline relies on it (a replayed ingest batch must not be staged again), so the fix skips them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.RLock()


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return method(*args, **kwargs)

    wrapper.__devicepipe_serialised__ = True  # type: ignore[attr-defined]
    return wrapper


def apply() -> None:
    """Idempotent: patch moto's Kinesis and DynamoDB stream shards."""
    from moto.dynamodb.models.table import StreamShard
    from moto.kinesis.models import Shard

    for cls, names in (
        (Shard, ("put_record", "get_records", "get_min_sequence_number", "get_max_sequence_number")),
        (StreamShard, ("get",)),
    ):
        for name in names:
            method = getattr(cls, name)
            if not getattr(method, "__devicepipe_serialised__", False):
                setattr(cls, name, _serialised(method))
    if not getattr(StreamShard.add, "__devicepipe_serialised__", False):
        original_add = StreamShard.add

        def add(self: Any, old: Any, new: Any) -> None:
            if old is not None and new is not None and old.to_json() == new.to_json():
                return  # unchanged item: DynamoDB Streams records nothing
            original_add(self, old, new)

        StreamShard.add = _serialised(add)  # type: ignore[method-assign]
