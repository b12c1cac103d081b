"""Staging: own-region readings only, one deterministic gzip object per batch, COPY-ready rows."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import pytest

from devicepipe.retry import Backoff, Retrier
from devicepipe.staging import Stager, row
from devicepipe.streams import changes
from devicepipe_tools.events import altered, dynamodb_record, reading, table_item
from devicepipe_tools.fakes import FakeS3
from devicepipe_tools.template import ROOT

EVENT = json.loads((ROOT / "events" / "stager" / "own-and-replicated.json").read_text())


def stager(s3: FakeS3, attempts: int = 3) -> Stager:
    return Stager(s3, "staging", "us-east-1", Retrier(Backoff(max_attempts=attempts), sleep=lambda _: None))


def test_only_own_region_reading_writes_are_staged_in_one_put() -> None:
    s3 = FakeS3()
    result = stager(s3).stage(list(changes(EVENT["Records"])))
    # 6 records: 3 own-region readings (2 inserts, 1 modify); skipped: replicated, LATEST item, removal
    assert (result.staged, result.skipped, result.puts, s3.calls) == (3, 3, 1, 1)
    ((bucket, key),) = s3.objects
    first, last = EVENT["Records"][0]["dynamodb"]["SequenceNumber"], EVENT["Records"][-1]["dynamodb"]["SequenceNumber"]
    assert key == f"readings/origin=us-east-1/dt=2026-11-02/hour=09/{first}-{last}.jsonl.gz"
    rows = [json.loads(line) for line in gzip.decompress(s3.objects[(bucket, key)]).splitlines()]
    assert [(r["device_id"], r["seq"]) for r in rows] == [("dev-001", 2), ("dev-001", 1), ("dev-002", 9)]
    assert {r["origin_region"] for r in rows} == {"us-east-1"}


def test_rows_are_flat_with_lower_case_columns_for_copy_json_auto() -> None:
    item = table_item({**reading("d", "b", "2026-11-02T09:00:00Z", 3), "firmware": {"v": 2}, "site": "roof"})
    assert row(item) == {
        "device_id": "d",
        "branch_id": "b",
        "ts": "2026-11-02T09:00:00.000000Z",
        "seq": 3,
        "metrics": {"temp_c": 21.5, "humidity": 0.41, "door": "closed"},
        "origin_region": "us-east-1",
        "ingested_at": item["ingested_at"],
        "extra": {"firmware": {"v": 2}, "site": "roof"},
    }


def test_a_retried_batch_rewrites_the_same_key_with_the_same_bytes() -> None:
    s3 = FakeS3()
    stager(s3).stage(list(changes(EVENT["Records"])))
    first = dict(s3.objects)
    stager(s3).stage(list(changes(EVENT["Records"])))
    assert s3.objects == first and s3.calls == 2


def test_nothing_to_stage_makes_no_put() -> None:
    s3 = FakeS3()
    other = [
        dynamodb_record("INSERT", table_item(reading("d", "b", 1_793_610_000_000), "eu-west-1"), sequence_number=1)
    ]
    result = stager(s3).stage(list(changes(other)))
    assert (result.staged, result.skipped, s3.calls) == (0, 1, 0)


def test_failed_put_is_reported_not_counted() -> None:
    result = stager(FakeS3(fail_calls=10), attempts=2).stage(list(changes(EVENT["Records"])))
    assert result.staged == 0 and "gave up after 2 attempts" in result.error


#: Numbers as DynamoDB keeps them (up to 38 digits, 1E-130 to 9.99...E+125: the N type's range), each staged
#: with every digit: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html
EXACT = {
    "energy_kwh": "1234567890.1234567890123456789",  # 29 significant digits; a float keeps 17
    "ratio": "0.1",
    "tiny": "1E-130",
    "huge": "9.9999999999999999999999999999999999999E+125",
    "count": "12345678901234567890123456789012345678",  # 38 digits, beyond 64 bits
    "below_int64": "-9223372036854775809",
    "int64": "9223372036854775807",
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_numbers_are_staged_exactly_as_stored(name: str) -> None:
    # Given a reading whose metrics hold numbers a float cannot carry
    doc = reading("d", "b", "2026-11-02T09:00:00Z", 1)
    metrics = {"M": {k: {"N": v} for k, v in EXACT.items()}}
    record = altered(dynamodb_record("INSERT", table_item(doc), sequence_number=1), metrics=metrics)
    # When it is staged
    s3 = FakeS3()
    stager(s3).stage(list(changes([record])))
    (line,) = gzip.decompress(next(iter(s3.objects.values()))).splitlines()
    # Then the line holds each number as a JSON number with the stored value, digit for digit
    staged = json.loads(line, parse_float=Decimal, parse_int=Decimal)["metrics"][name]
    assert staged == Decimal(EXACT[name])
    assert f'"{name}":{Decimal(EXACT[name])}'.encode() in line
