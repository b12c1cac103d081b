"""The partial batch response, one type for the ingest and the stream consumers."""

from __future__ import annotations

import dataclasses
import json

import pytest

from devicepipe.batch_failures import BatchItemFailures
from devicepipe.ingest import IngestReport
from devicepipe.streams import decode
from devicepipe_tools.events import dynamodb_record, reading, table_item


def test_the_response_is_the_plain_dict_lambda_reads() -> None:
    response = BatchItemFailures(("3", "2")).to_response()
    # A JSON object of lists of objects, as Lambda (and the local stack's mapping) reads it
    assert json.loads(json.dumps(response)) == {"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "2"}]}
    assert BatchItemFailures().to_response() == {"batchItemFailures": []}


def test_failures_keep_stream_order_whatever_order_they_were_found_in() -> None:
    assert BatchItemFailures.of(["5", "", "1", "9"], {"9", "", "5"}).sequence_numbers == ("5", "", "9")


def test_it_is_immutable() -> None:
    failures = BatchItemFailures(("1",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        failures.sequence_numbers = ()  # type: ignore[misc]


def test_the_ingest_and_the_stream_consumers_report_through_it() -> None:
    report = IngestReport(failed_sequence_numbers=["49590338271490256608559692538361571095921575989136588898"])
    assert report.failures == BatchItemFailures(tuple(report.failed_sequence_numbers))
    assert report.response() == report.failures.to_response()
    records = [
        dynamodb_record("INSERT", table_item(reading("d1", "b1", 1_793_610_000_000 + i, i)), sequence_number=s)
        for i, s in enumerate((30, 10, 20))
    ]
    batch = decode(records)
    assert batch.failures({"20", "30"}) == BatchItemFailures(("30", "20"))
    assert batch.response({"20", "30"}) == batch.failures({"20", "30"}).to_response()
