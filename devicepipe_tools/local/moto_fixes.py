"""Fixes to moto that the local stack needs, applied in the process that runs moto's server.

moto's Kinesis shard assigns a sequence number as "last one + 1" without a lock (its own comment says it is
not safe for concurrency), so concurrent PutRecords calls, which any real producer makes, overwrite each
other's records; reads iterate the same dict while it grows. Every shard access is serialised here.
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
    """Idempotent: patch moto's Kinesis ``Shard`` so puts and reads of a shard never interleave."""
    from moto.kinesis.models import Shard

    for name in ("put_record", "get_records", "get_min_sequence_number", "get_max_sequence_number"):
        method = getattr(Shard, name)
        if not getattr(method, "__devicepipe_serialised__", False):
            setattr(Shard, name, _serialised(method))
