"""KPL record aggregation: the Kinesis Producer Library's wire format, both directions.

Format: 4 magic bytes, a protobuf ``AggregatedRecord``, then the MD5 digest of the protobuf bytes::

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;
    }

Only the fields the pipeline needs are decoded (tags are skipped). Written here rather than taken from
``aws-kinesis-agg`` so the layer does not carry protobuf; the tests check both directions against that library.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST_LEN = 16


class AggregationError(ValueError):
    """An aggregated record that cannot be decoded (bad checksum or malformed protobuf)."""


@dataclass(slots=True, frozen=True)
class SubRecord:
    partition_key: str
    data: bytes


def is_aggregated(data: bytes) -> bool:
    """True when ``data`` carries the KPL magic prefix (and room for a digest)."""
    return data[:4] == MAGIC and len(data) >= len(MAGIC) + _DIGEST_LEN


def deaggregate(data: bytes) -> list[SubRecord]:
    """Split one KPL-aggregated Kinesis record into its user records, in order.

    Raises
    ------
    AggregationError
        If the digest does not match or the protobuf is malformed.
    """
    body = data[len(MAGIC) : -_DIGEST_LEN]
    if hashlib.md5(body).digest() != data[-_DIGEST_LEN:]:  # noqa: S324 - the KPL format fixes MD5
        raise AggregationError("KPL aggregated record: MD5 checksum mismatch")
    try:
        keys: list[str] = []
        raw_records: list[bytes] = []
        for field, value in _fields(body):
            if field == 1:
                keys.append(bytes(value).decode())
            elif field == 3:
                raw_records.append(bytes(value))
        return [_sub_record(raw, keys) for raw in raw_records]
    except (IndexError, UnicodeDecodeError, TypeError) as exc:
        raise AggregationError(f"KPL aggregated record: malformed protobuf ({exc})") from None


def _sub_record(raw: bytes, keys: list[str]) -> SubRecord:
    """One user record of an aggregated record: its partition key (an index into ``keys``) and its data."""
    key_index, payload = None, None
    for field, value in _fields(raw):
        if field == 1:
            key_index = value
        elif field == 3:
            payload = bytes(value)
    if not isinstance(key_index, int) or payload is None or key_index >= len(keys):
        raise AggregationError("KPL aggregated record: sub-record lacks partition key or data")
    return SubRecord(keys[key_index], payload)


def aggregate(records: list[SubRecord]) -> bytes:
    """Pack user records into one KPL-aggregated record (partition keys de-duplicated in a table)."""
    key_index: dict[str, int] = {}
    body = bytearray()
    for rec in records:
        if rec.partition_key not in key_index:
            key_index[rec.partition_key] = len(key_index)
    for key in key_index:
        _put_bytes(body, 1, key.encode())
    for rec in records:
        inner = bytearray()
        _put_tag(inner, 1, 0)
        _put_varint(inner, key_index[rec.partition_key])
        _put_bytes(inner, 3, rec.data)
        _put_bytes(body, 3, bytes(inner))
    return MAGIC + bytes(body) + hashlib.md5(body).digest()  # noqa: S324


def _fields(buf: bytes) -> list[tuple[int, int | memoryview]]:
    """Top-level (field number, value) pairs of a protobuf message; varints as int, bytes as views."""
    view = memoryview(buf)
    pos, end = 0, len(buf)
    out: list[tuple[int, int | memoryview]] = []
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            out.append((field, value))
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise IndexError("length past end of message")
            out.append((field, view[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise IndexError(f"unsupported wire type {wire}")
    if pos != end:
        raise IndexError("truncated field")
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_tag(out: bytearray, field: int, wire: int) -> None:
    _put_varint(out, field << 3 | wire)


def _put_bytes(out: bytearray, field: int, data: bytes) -> None:
    _put_tag(out, field, 2)
    _put_varint(out, len(data))
    out += data
