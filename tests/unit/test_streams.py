"""Stream records decoded once for every consumer: good records as changes, the rest refused with a reason."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import orjson
import pytest

from devicepipe.quarantine import stream_entry
from devicepipe.streams import BadRecord, changes, decode, exact_number, plain_number
from devicepipe_tools.events import altered, dynamodb_record, reading, table_item, undecodable_records

DOC = reading("dev-1", "br-1", "2026-11-02T09:00:00Z", 4)


def insert(item: dict[str, Any] | None = None, seq: int = 7) -> dict[str, Any]:
    return dynamodb_record("INSERT", item or table_item(DOC), sequence_number=seq)


def reason(record: dict[str, Any]) -> str:
    (rejected,) = decode([record]).rejected
    return rejected.reason


def test_a_batch_keeps_its_good_records_and_every_sequence_number_in_order() -> None:
    bad = undecodable_records(10)
    batch = decode([insert(seq=1), *bad.values(), insert(seq=99)])
    assert [c.sequence_number for c in batch.changes] == ["1", "99"]
    assert len(batch.rejected) == len(bad)
    # the record without a dynamodb section has no sequence number: "" (Lambda retries a whole batch for it)
    assert batch.sequence_numbers == ["1", "", *(str(n) for n in range(11, 16)), "99"]


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ({"device_id": {"S": "dev 1"}}, "NewImage.device_id: not a valid identifier"),
        ({"branch_id": None}, "NewImage.branch_id: required"),
        ({"ts": {"S": "2026-11-02T09:00:00Z"}}, "NewImage.ts: not a stored time"),  # not the canonical form
        ({"ts": {"N": "1793610000000"}}, "NewImage.ts: not a stored time"),
        ({"ingested_at": None}, "NewImage.ingested_at: required"),
        ({"seq": {"S": "4"}}, "NewImage.seq: must be an integer"),
        ({"seq": {"N": "-1"}}, "NewImage.seq: must be an integer"),
        ({"metrics": {"NULL": True}}, "NewImage.metrics: must be a map"),
        ({"origin_region": None}, "NewImage.origin_region: required"),
        ({"expires_at": {"N": "1.5"}}, "NewImage.expires_at: must be an integer"),
        ({"site": {"BS": ["AAE="]}}, "NewImage.site: a binary set attribute (BS)"),
        ({"site": {"X": "?"}}, "NewImage.site: not an attribute value of a known type (X)"),
        ({"site": {"S": "a", "N": "1"}}, "NewImage.site: not an attribute value"),
        ({"metrics": {"M": {"t": {"N": "NaN"}}}}, "NewImage.metrics.t: not a finite number"),
        ({"metrics": {"M": {"t": {"N": "twelve"}}}}, "NewImage.metrics.t: not a number"),
        ({"metrics": {"M": {"l": {"L": [{"N": "1"}, {"SS": ["a"]}]}}}}, "NewImage.metrics.l[1]: a string set"),
    ],
)
def test_an_image_that_breaks_the_item_contract_is_refused_naming_the_field(
    changed: dict[str, Any], expected: str
) -> None:
    assert reason(altered(insert(), **changed)).startswith(expected)


def test_records_that_are_no_stream_records_are_refused() -> None:
    assert reason({"eventName": "INSERT"}) == "dynamodb: missing (not a DynamoDB stream record)"
    assert reason({**insert(), "eventName": "UPSERT"}).startswith("eventName:")
    no_keys = insert()
    del no_keys["dynamodb"]["Keys"]
    assert reason(no_keys) == "Keys: missing"
    assert decode(["text"]).rejected[0].reason == "not a JSON object"


def test_numbers_keep_every_digit_and_fit_json_encoders() -> None:
    metrics = {"M": {"i": {"N": "9223372036854775807"}, "big": {"N": "9223372036854775808"}, "f": {"N": "0.1"}}}
    (change,) = changes([altered(insert(), metrics=metrics)])
    assert change.new is not None
    got = change.new["metrics"]
    assert got == {"i": 2**63 - 1, "big": Decimal(2**63), "f": Decimal("0.1")}
    assert type(got["i"]) is int  # what orjson takes natively (it refuses ints beyond 64 bits)
    assert orjson.dumps(got, default=exact_number) == b'{"i":9223372036854775807,"big":9223372036854775808,"f":0.1}'
    assert json.dumps(got, default=plain_number) == '{"i": 9223372036854775807, "big": 9223372036854775808, "f": 0.1}'


def test_only_the_images_a_consumer_reads_are_decoded() -> None:
    """A REMOVE (a TTL deletion) with a broken image is no one's concern; a LATEST change needs both images."""
    broken = altered(insert(), site={"B": "AAE="})
    removal = dynamodb_record("REMOVE", table_item(DOC), sequence_number=1)
    removal["dynamodb"]["OldImage"] = broken["dynamodb"]["NewImage"]
    (change,) = changes([removal])
    assert (change.new, change.old) == (None, None)
    latest = dynamodb_record("MODIFY", table_item(DOC, latest=True), sequence_number=2)
    assert reason(latest) == "OldImage: missing"
    with pytest.raises(BadRecord, match="OldImage: missing"):
        changes([latest])


def test_the_response_names_failed_records_in_stream_order() -> None:
    batch = decode([insert(seq=3), insert(seq=1), insert(seq=2)])
    assert batch.response({"2", "3"}) == {"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "2"}]}


def test_a_record_without_a_sequence_number_that_must_be_retried_fails_the_whole_batch() -> None:
    """Lambda takes an empty identifier as the whole batch failed:
    https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html"""
    batch = decode([insert(seq=1), {"eventName": "INSERT"}])
    assert batch.response({""}) == {"batchItemFailures": [{"itemIdentifier": ""}]}


def test_a_quarantined_stream_record_keeps_its_bytes_and_a_key_a_replay_rewrites() -> None:
    bad = undecodable_records(10)
    (binary,) = decode([bad["binary attribute"]]).rejected
    entry = stream_entry("stager", binary)
    assert entry.key == "quarantine/stage=stager/dt=2026-11-02/2026-11-01T00:00:00.000/11.json"
    assert json.loads(entry.payload) == bad["binary attribute"]
    assert entry.partition_key == "DEVICE#dev-odd"
    doc = json.loads(entry.document())
    assert doc["reason"].startswith("NewImage.firmware: a binary attribute (B)")
    assert json.loads(base64.b64decode(doc["payload_base64"])) == bad["binary attribute"]
    # A record without a sequence number (nor a creation time: it is filed under today) is named by its event id
    (no_section,) = decode([bad["no dynamodb section"]]).rejected
    event_id = bad["no dynamodb section"]["eventID"]
    assert stream_entry("stager", no_section).key.endswith(f"/2026-11-01T00:00:00.000/{event_id}.json")
