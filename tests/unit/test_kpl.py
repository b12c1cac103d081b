"""KPL aggregation codec, checked against the reference implementation (aws-kinesis-agg)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records

from devicepipe.kpl import MAGIC, AggregationError, SubRecord, aggregate, deaggregate, is_aggregated
from devicepipe_tools.events import kinesis_record

SUBS = [SubRecord(f"dev-{i % 3}", f'{{"n":{i}}}'.encode() * (i + 1)) for i in range(20)]


def test_round_trip_keeps_order_keys_and_bytes() -> None:
    assert deaggregate(aggregate(SUBS)) == SUBS


def test_reference_library_reads_what_we_write() -> None:
    event_record = kinesis_record(aggregate(SUBS), partition_key="dev-0", sequence_number=1, arrival_s=1.0)
    out = deaggregate_records([event_record])
    assert [(r["kinesis"]["partitionKey"], base64.b64decode(r["kinesis"]["data"])) for r in out] == [
        (s.partition_key, s.data) for s in SUBS
    ]


def test_we_read_what_the_reference_library_writes() -> None:
    agg = RecordAggregator()
    for sub in SUBS:
        assert agg.add_user_record(sub.partition_key, sub.data) is None
    _, _, data = agg.clear_and_get().get_contents()
    assert is_aggregated(data)
    assert deaggregate(data) == SUBS


def test_plain_json_is_not_taken_for_aggregated() -> None:
    assert not is_aggregated(b'{"device_id": "x"}')
    assert not is_aggregated(MAGIC)


def test_checksum_mismatch_is_an_error() -> None:
    data = bytearray(aggregate(SUBS))
    data[10] ^= 0xFF
    with pytest.raises(AggregationError, match="checksum"):
        deaggregate(bytes(data))


@pytest.mark.parametrize("body", [b"\x1a\xff\x01", b"\x0a\x05ab", b"\x1a\x02\x08\x00", b"\x0f"])
def test_malformed_protobuf_is_an_error(body: bytes) -> None:
    data = MAGIC + body + hashlib.md5(body).digest()
    with pytest.raises(AggregationError):
        deaggregate(data)
