"""GetRecords of Kinesis and DynamoDB Streams, answered beside moto's server in the supervisor.

moto answers GetRecords through its generic response serialiser, which walks every attribute of every record
against the service model: with the local stack's three stream readers that was most of the supervisor's CPU
(py-spy over a 10,000-reading demo: 38% of its samples in that serialiser), while the records are already in
the wire format. ``StreamReads`` wraps moto's WSGI app and answers those two calls itself, from moto's own
shards (the same records and sequence numbers; Kinesis shards under moto_fixes' shard locks), with one
``json.dumps`` of the records as they are; a DynamoDB stream record is encoded once and kept.

DynamoDB Streams iterators it hands out name the stream and the next sequence number (``ARN|devicepipe|N``),
so they cost moto no state (moto keeps every iterator it ever made); moto's own iterators are still taken.
Kinesis iterators are moto's own, which already name the shard and position. Any other request, or one this
cannot answer (an unknown stream or iterator, a malformed body), goes to moto as before, which answers it or
its error as it always did.

A read may ask to wait (``WAIT_HEADER``, seconds, at most ``MAX_WAIT_S``): when nothing is there, it is answered
as soon as records arrive or the wait is over, like SQS's long polling. Only the local stack's own pollers ask
(``esm.WireReads``): an idle shard costs one request per wait, and records are still picked up at once.
"""

from __future__ import annotations

import calendar
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from devicepipe_tools.local import moto_fixes

_KINESIS = "Kinesis_20131202.GetRecords"
_STREAMS = "DynamoDBStreams_20120810.GetRecords"
_REGION_IN_SIGNATURE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")
_OURS = "|devicepipe|"
_ENCODED = "_devicepipe_json"  # a DynamoDB stream record's wire form, kept on moto's record
WAIT_HEADER = "X-Devicepipe-Wait"
MAX_WAIT_S = 1.0
_RECHECK_S = 0.02  # how often a waiting read looks again: a lookup in this process, not a request


class _NotOurs(Exception):
    """The request goes to moto."""


class StreamReads:
    """WSGI middleware for moto's server: answers GetRecords of Kinesis and DynamoDB Streams."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.answered = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target not in (_KINESIS, _STREAMS):
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            request = json.loads(body)
            match = _REGION_IN_SIGNATURE.search(environ.get("HTTP_AUTHORIZATION", ""))
            if not match or not isinstance(request, dict):
                raise _NotOurs
            wait_s = min(float(environ.get("HTTP_" + WAIT_HEADER.upper().replace("-", "_")) or 0), MAX_WAIT_S)
            read = kinesis_get_records if target == _KINESIS else streams_get_records
            answer, got = read(match[1], request)
            deadline = time.monotonic() + wait_s
            while not got and time.monotonic() < deadline:
                time.sleep(_RECHECK_S)
                answer, got = read(match[1], request)
            content_type = "application/x-amz-json-1.1" if target == _KINESIS else "application/x-amz-json-1.0"
        except (_NotOurs, ValueError, TypeError, LookupError):  # LookupError: KeyError, IndexError
            environ["wsgi.input"] = io.BytesIO(body)  # read once here: moto reads it again
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        except Exception as exc:  # moto's own errors (an unknown stream): moto says them in its words
            if type(exc).__module__.startswith("moto."):
                environ["wsgi.input"] = io.BytesIO(body)
                return self.app(environ, start_response)  # type: ignore[no-any-return]
            raise
        self.answered += 1
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(answer))),
                ("x-amzn-RequestId", str(uuid.uuid4())),
            ],
        )
        return [answer]


def kinesis_get_records(region: str, request: dict[str, Any]) -> tuple[bytes, int]:
    """A Kinesis GetRecords answer (records after the iterator's position, up to ``Limit``: 10,000) and how many
    records it holds."""
    decompose, compose = moto_fixes.kinesis_iterator_codec()
    stream_name, shard_id, last = decompose(request["ShardIterator"])
    backend = moto_fixes.kinesis_backend(region)
    stream = backend.describe_stream(stream_arn=request.get("StreamARN"), stream_name=stream_name)
    shard = stream.get_shard(shard_id)
    records, last_id, behind_ms = shard.get_records(last, int(request.get("Limit") or 10_000))
    # moto keeps each record's data as the base64 text PutRecord(s) sent: the wire form already
    out = {
        "Records": [
            {
                "Data": r.data if isinstance(r.data, str) else r.data.decode(),
                "PartitionKey": r.partition_key,
                "SequenceNumber": str(r.sequence_number),
                "ApproximateArrivalTimestamp": _epoch_s(r.created_at_datetime),
            }
            for r in records
        ],
        "NextShardIterator": compose(stream_name, shard, last_id),
        "MillisBehindLatest": behind_ms,
    }
    return json.dumps(out, separators=(",", ":")).encode(), len(records)


def streams_get_records(region: str, request: dict[str, Any]) -> tuple[bytes, int]:
    """A DynamoDB Streams GetRecords answer (records from the iterator's position, up to ``Limit``: 1,000) and
    how many records it holds."""
    iterator: str = request["ShardIterator"]
    limit = int(request.get("Limit") or 1000)
    if _OURS in iterator:
        arn, _, position = iterator.partition(_OURS)
        table = moto_fixes.dynamodb_backend(region).get_table(arn.split(":", 5)[5].split("/")[1])
        shard, sequence = table.stream_shard, int(position)
        if shard is None or not arn.startswith(table.table_arn):
            raise _NotOurs
    else:  # one of moto's (GetShardIterator's answer)
        known = moto_fixes.dynamodb_stream_iterators(region).get(iterator)
        if known is None:
            raise _NotOurs
        shard, sequence = known.stream_shard, int(known.sequence_number)
        arn = iterator.partition("|")[0]
    start = sequence - shard.starting_sequence_number
    if start < 0:
        raise _NotOurs
    records = shard.items[start : start + limit]  # a slice of a list only appended to: consistent under the GIL
    body = b",".join(_encoded(r) for r in records)
    next_iterator = f"{arn}{_OURS}{sequence + len(records)}"
    answer = b'{"Records":[' + body + b'],"NextShardIterator":' + json.dumps(next_iterator).encode() + b"}"
    return answer, len(records)


def _encoded(record: Any) -> bytes:
    encoded: bytes | None = record.__dict__.get(_ENCODED)
    if encoded is None:
        encoded = json.dumps(record.to_json(), separators=(",", ":"), default=_epoch_s).encode()
        record.__dict__[_ENCODED] = encoded
    return encoded


def _epoch_s(value: Any) -> float:
    """moto's record times are naive UTC datetimes; the wire carries epoch seconds to the millisecond below,
    as moto's serialiser writes them."""
    if isinstance(value, datetime):
        return calendar.timegm(value.utctimetuple()) + value.microsecond // 1000 / 1000
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
