"""The reading contract: what is accepted, in which canonical form, and why a record is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devicepipe import models
from devicepipe.models import InvalidReading, parse_reading, unmarshal, unmarshal_item

NOW = 1_795_000_000.0  # 2026-11-18T...Z


def valid(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device_id": "dev-1",
        "branch_id": "branch-nyc",
        "ts": "2026-11-02T09:00:00.123Z",
        "seq": 3,
        "metrics": {"temp_c": 21.5, "door": "closed", "count": 7, "ok": True, "nested": {"a": [1, None]}},
    }
    doc.update(overrides)
    return doc


def reason_for(doc: Any) -> str:
    with pytest.raises(InvalidReading) as info:
        parse_reading(doc, now_s=NOW)
    return info.value.reason


def test_valid_reading_is_canonicalised_and_marshalled() -> None:
    # Given a reading with every core field
    # When it is parsed
    reading = parse_reading(valid(), now_s=NOW)
    # Then its keys and attributes follow the storage contract
    assert reading.ts == "2026-11-02T09:00:00.123000Z"
    assert reading.pk == "DEVICE#dev-1"
    assert reading.sk == "R#2026-11-02T09:00:00.123000Z#0000000000000000003"
    assert unmarshal_item(reading.attributes) == {
        "pk": "DEVICE#dev-1",
        "sk": "R#2026-11-02T09:00:00.123000Z#0000000000000000003",
        "device_id": "dev-1",
        "branch_id": "branch-nyc",
        "ts": "2026-11-02T09:00:00.123000Z",
        "seq": 3,
        "metrics": {"temp_c": 21.5, "door": "closed", "count": 7, "ok": True, "nested": {"a": [1, None]}},
    }


@pytest.mark.parametrize(
    ("ts", "canonical"),
    [
        ("2026-11-02T10:00:00+01:00", "2026-11-02T09:00:00.000000Z"),
        ("2026-11-02t09:00:00z", "2026-11-02T09:00:00.000000Z"),
        ("2026-11-02T09:00:00.123456789Z", "2026-11-02T09:00:00.123456Z"),
        (1_793_610_000_123, "2026-11-02T09:00:00.123000Z"),
    ],
)
def test_ts_forms_map_to_one_fixed_width_utc_text(ts: Any, canonical: str) -> None:
    assert parse_reading(valid(ts=ts), now_s=NOW).ts == canonical


def test_versions_sort_by_ts_then_seq() -> None:
    a = parse_reading(valid(ts="2026-11-02T09:00:00Z", seq=10), now_s=NOW)
    b = parse_reading(valid(ts="2026-11-02T09:00:00Z", seq=9), now_s=NOW)
    c = parse_reading(valid(ts="2026-11-02T09:00:00.000001Z", seq=0), now_s=NOW)
    assert b.version < a.version < c.version
    assert b.sk < a.sk < c.sk


def test_seq_defaults_to_zero_and_extra_fields_are_kept() -> None:
    doc = valid(firmware={"v": "2.1"}, site="roof")
    del doc["seq"]
    reading = parse_reading(doc, now_s=NOW)
    assert reading.seq == 0
    assert unmarshal(reading.attributes["firmware"]) == {"v": "2.1"}
    assert unmarshal(reading.attributes["site"]) == "roof"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ([1, 2], "not a JSON object: got array"),
        ("text", "not a JSON object: got string"),
        (valid(device_id=None), "device_id: required"),
        (valid(device_id=7), "device_id: must be a string, got number"),
        (valid(device_id="has space"), "device_id: must be 1-128 characters of [A-Za-z0-9._:-]"),
        (valid(device_id="x" * 129), "device_id: must be 1-128 characters of [A-Za-z0-9._:-]"),
        (valid(branch_id=""), "branch_id: must be 1-128 characters of [A-Za-z0-9._:-]"),
        (valid(ts="2026-11-02 09:00:00"), "ts: not RFC 3339 with a zone"),
        (valid(ts="2026-11-02T09:00:00"), "ts: not RFC 3339 with a zone"),
        (valid(ts="2026-13-02T09:00:00Z"), "ts: not a valid date and time"),
        (valid(ts=1_793_610_000), "ts: epoch milliseconds before 2000-01-01"),
        (valid(ts=1.5e12), "ts: must be RFC 3339 text or epoch milliseconds, got number"),
        (valid(ts=True), "ts: must be RFC 3339 text or epoch milliseconds, got boolean"),
        (valid(ts="2030-01-01T00:00:00Z"), "ts: more than 86400s in the future"),
        (valid(seq=-1), "seq: must be an integer from 0 to 2^63-1"),
        (valid(seq="3"), "seq: must be an integer from 0 to 2^63-1"),
        (valid(seq=2**63), "seq: must be an integer from 0 to 2^63-1"),
        (valid(metrics=None), "metrics: required"),
        (valid(metrics=[1]), "metrics: must be an object, got array"),
        (valid(metrics={"big": 10**40}), "metrics.big: integer has more than 38 digits"),
        (valid(metrics={"tiny": 1e-200}), "metrics.tiny: number outside DynamoDB's range"),
        (valid(metrics={"": 1}), "metrics: empty key"),
        (valid(origin_region="eu-west-1"), "origin_region: reserved field name"),
        (valid(pk="x"), "pk: reserved field name"),
    ],
)
def test_contract_violations_are_refused_with_a_reason(doc: Any, reason: str) -> None:
    assert reason_for(doc).startswith(reason)


def test_ts_without_field_is_refused() -> None:
    doc = valid()
    del doc["ts"]
    assert reason_for(doc) == "ts: required"


def test_nesting_deeper_than_dynamodb_allows_is_refused() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"k": deep}
    assert "nested deeper than" in reason_for(valid(metrics=deep))


def test_numbers_round_trip_exactly() -> None:
    metrics = {"f": 0.1, "neg": -2.5e-7, "zero": 0.0, "i": -(10**37), "big": 1.7976931348623157e125}
    reading = parse_reading(valid(metrics=metrics), now_s=NOW)
    assert unmarshal(reading.attributes["metrics"]) == metrics
    assert json.dumps(unmarshal(reading.attributes["metrics"])) == json.dumps(metrics)


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-02T09:12:34Z",
        "2026-11-02T09:12:34.5Z",
        "2026-11-02T09:12:34.123456789Z",
        "2026-11-02T09:12:59.999999Z",
        "2026-11-02T09:12:60Z",
        "2026-11-02T09:12:3xZ",
        "2026-11-02T09:12:34.Z",
        "2026-11-02T09:12:34.1234567890Z",
        "2026-11-02T09:12:3\uff14Z",
        "2026-11-02T09:12:34+00:00",
        "2026-11-02T09:12:34.1z",
    ],
)
def test_cached_minute_fast_path_agrees_with_the_full_parse(ts: str) -> None:
    # Given the outcome with no minute cached (the full regex + datetime parse)
    models._utc_minutes.clear()

    def outcome() -> tuple[str, int] | str:
        try:
            r = parse_reading(valid(ts=ts), now_s=NOW)
        except InvalidReading as exc:
            return exc.reason
        return r.ts, r.epoch_s

    cold = outcome()
    # When the minute is cached by a valid timestamp in the same minute
    parse_reading(valid(ts="2026-11-02T09:12:00Z"), now_s=NOW)
    assert "2026-11-02T09:12" in models._utc_minutes
    # Then the fast path gives exactly the same result
    assert outcome() == cold


@pytest.mark.parametrize("value", [2.0**63, -(2.0**63), 1.5e20, [1.0, {"deep": 9.9e30}]])
def test_big_floats_from_a_rounding_parser_are_sent_back_for_an_exact_decode(value: Any) -> None:
    # Given a float that orjson could have made from an integer literal beyond 64 bits
    doc = valid(metrics={"x": value})
    # When the caller says its floats may be rounded integers
    with pytest.raises(models.InexactNumber):
        parse_reading(doc, now_s=NOW, exact_floats=False)
    # Then it is refused as inexact; from an exact parser the same value is stored as it is
    assert unmarshal(parse_reading(doc, now_s=NOW).attributes["metrics"]) == {"x": value}


def test_floats_below_two_to_the_63_are_trusted_from_any_parser() -> None:
    doc = valid(metrics={"x": 9.2e18, "y": -0.5, "z": 0.0})
    assert unmarshal(parse_reading(doc, now_s=NOW, exact_floats=False).attributes["metrics"]) == doc["metrics"]
