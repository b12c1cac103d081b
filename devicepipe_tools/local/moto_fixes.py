"""Every use of moto's private names, in one place, for the moto versions it knows.

The local stack runs moto's server in its supervisor and reaches into moto where no public interface does what it
needs. Those internals change between moto releases without notice, so ``check`` refuses a moto whose version
(major.minor) is not in ``KNOWN_SERIES``, or that lacks a name used here, with one line saying what to do;
``apply``, ``start_server`` and the replication hooks call it first. pyproject.toml pins moto to those series and
constraints.txt to the version tested. Porting to a new series: read the names in ``PRIVATE_NAMES`` in the new
moto, adjust, run tests/integration/test_replication.py and `make demo REGIONS=us-east-1,eu-west-1`, then add it.

The fixes (``apply``):
- moto's Kinesis shard assigns a sequence number as "last one + 1" without a lock (its own comment says it is
  not safe for concurrency), so concurrent PutRecords calls, which any real producer makes, overwrite each
  other's records; moto's DynamoDB stream shard numbers records the same way. Each shard is serialised here
  by a lock of its own.
- moto's Kinesis shard finds the last sequence number and the records after an iterator by scanning every
  record the shard holds, so puts and polls slow down as the stream fills (quadratic over a demo). Sequence
  numbers are consecutive integers there, so both become direct lookups.
- DynamoDB Streams writes no record for a write that changes nothing (AWS documents this); moto writes a
  MODIFY. The pipeline relies on it (a replayed ingest batch must not be staged again), so the fix skips them.

The other uses: the server's WSGI app, wrapped by the regional-outage middleware (``start_server``), and
DynamoDB's in-process write path and backends, which global-table replication hooks (``dynamodb_classes``,
``dynamodb_backend``; ``replication.py``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from devicepipe_tools.local.resources import ACCOUNT

if TYPE_CHECKING:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import StreamShard

#: moto's minor series whose internals this module was written and tested against (5.2.5: constraints.txt).
KNOWN_SERIES = ("5.2",)
#: The private names used here (module, then attribute path): ``check`` finds each before anything is patched.
PRIVATE_NAMES = (
    ("moto.kinesis.models", "Record"),
    ("moto.kinesis.models", "Shard.put_record"),
    ("moto.kinesis.models", "Shard.get_records"),
    ("moto.kinesis.models", "Shard.get_min_sequence_number"),
    ("moto.kinesis.models", "Shard.get_max_sequence_number"),
    ("moto.dynamodb.models.table", "StreamShard.add"),
    ("moto.dynamodb.models.table", "StreamShard.get"),
    ("moto.dynamodb.models", "DynamoDBBackend.put_item"),
    ("moto.dynamodb.models", "DynamoDBBackend.update_item"),
    ("moto.dynamodb.models", "DynamoDBBackend.delete_item"),
    ("moto.dynamodb.models", "DynamoDBBackend.transact_write_items"),
    ("moto.dynamodb.models", "DynamoDBBackend.get_table"),
    ("moto.dynamodb.models", "dynamodb_backends"),
    ("moto.server", "ThreadedMotoServer"),  # and its werkzeug server, ``_server`` (found once started)
    # GetRecords answered beside moto (stream_reads.py)
    ("moto.kinesis.models", "kinesis_backends"),
    ("moto.kinesis.utils", "compose_shard_iterator"),
    ("moto.kinesis.utils", "decompose_shard_iterator"),
    ("moto.dynamodb.models.table", "StreamRecord.to_json"),
    ("moto.dynamodbstreams.models", "dynamodbstreams_backends"),
)
#: DynamoDBBackend's methods that write items: global-table replication serialises and observes them.
DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")

_MARK = "__devicepipe_fixed__"
_creation = threading.Lock()
_checked: set[str] = set()
_M = TypeVar("_M")


class MotoVersionError(RuntimeError):
    """The installed moto is not one whose internals this module knows."""


def installed_version() -> str:
    return importlib.metadata.version("moto")


def check_version(version: str | None = None) -> None:
    """``MotoVersionError``, in one line, unless moto ``version`` (the installed one by default) is of a known
    series. Cheap: it imports nothing of moto (``local up`` checks it before starting anything)."""
    version = version or installed_version()
    if ".".join(version.split(".")[:2]) not in KNOWN_SERIES:
        raise MotoVersionError(
            f"moto {version} is not a version the local stack knows ({', '.join(s + '.x' for s in KNOWN_SERIES)}): "
            "`make venv` installs the locked one (constraints.txt); a new series needs "
            "devicepipe_tools/local/moto_fixes.py ported first"
        )


def check(version: str | None = None) -> None:
    """``check_version``, then every private name used here must be in moto (imports moto's models)."""
    version = version or installed_version()
    if version in _checked:
        return
    check_version(version)
    if missing := [f"{module}.{path}" for module, path in PRIVATE_NAMES if not _has(module, path)]:
        raise MotoVersionError(
            f"moto {version} lacks {', '.join(missing)}, which devicepipe_tools/local/moto_fixes.py uses: "
            "`make venv` installs the locked moto (constraints.txt)"
        )
    _checked.add(version)


def _has(module: str, path: str) -> bool:
    try:
        target: Any = importlib.import_module(module)
    except ImportError:
        return False
    for name in path.split("."):
        if not hasattr(target, name):
            return False
        target = getattr(target, name)
    return True


def start_server(port: int, middleware: Callable[[Any], _M]) -> tuple[Callable[[], None], _M]:
    """moto's server on 127.0.0.1:``port``, in this process (its state lives here), its WSGI app wrapped by
    ``middleware``: how to stop it, and the middleware."""
    check()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # No public hook for WSGI middleware: the werkzeug server's app is swapped once it is listening.
    werkzeug_server = getattr(server, "_server", None)
    if not hasattr(werkzeug_server, "app"):
        server.stop()
        raise MotoVersionError(f"moto {installed_version()}'s ThreadedMotoServer has no _server.app to wrap")
    wrapped = middleware(werkzeug_server.app)  # type: ignore[union-attr]
    werkzeug_server.app = wrapped  # type: ignore[union-attr]
    return server.stop, wrapped


def dynamodb_classes() -> tuple[type[DynamoDBBackend], type[StreamShard]]:
    """moto's ``DynamoDBBackend`` (whose ``DYNAMODB_WRITES`` write items) and ``StreamShard`` (whose ``add``
    appends a table's stream record), for hooking the write path."""
    check()
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import StreamShard

    return DynamoDBBackend, StreamShard


def dynamodb_backend(region: str) -> Any:
    """moto's in-process DynamoDB backend of ``region`` (the local stack's account)."""
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[ACCOUNT][region]


def kinesis_backend(region: str) -> Any:
    """moto's in-process Kinesis backend of ``region`` (GetRecords beside moto: ``stream_reads``)."""
    from moto.kinesis.models import kinesis_backends

    return kinesis_backends[ACCOUNT][region]


def kinesis_iterator_codec() -> tuple[Callable[[str], list[str]], Callable[[str | None, Any, int], str]]:
    """moto's Kinesis shard iterators: (iterator -> [stream, shard, last sequence], (stream, shard, last) -> one)."""
    from moto.kinesis.utils import compose_shard_iterator, decompose_shard_iterator

    return decompose_shard_iterator, compose_shard_iterator


def dynamodb_stream_iterators(region: str) -> dict[str, Any]:
    """moto's DynamoDB Streams iterators of ``region`` by ARN (each with ``stream_shard``, ``sequence_number``)."""
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    return dynamodbstreams_backends[ACCOUNT][region].shard_iterators


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
    """Idempotent: patch moto's Kinesis and DynamoDB stream shards (``MotoVersionError`` on a moto not known)."""
    check()
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
