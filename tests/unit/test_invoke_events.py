"""`devicepipe invoke` refuses an event its function cannot receive in one line, before running anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devicepipe_tools.cli import EXIT_USAGE, main
from devicepipe_tools.template import ROOT


@pytest.mark.parametrize(
    ("function", "content", "says"),
    [
        ("IngestFunction", "{not json", "is not JSON: Expecting property name"),
        ("IngestFunction", "", "is not JSON: Expecting value"),
        ("IngestFunction", json.dumps(["a", "list"]), "holds a JSON array: an event is a JSON object"),
        ("IngestFunction", json.dumps({"foo": 1}), 'IngestFunction takes {"Records": [...]} from aws:kinesis'),
        ("IngestFunction", json.dumps({"Records": [1]}), "is not a stream event"),
        (
            "StagerFunction",
            (ROOT / "events" / "ingest" / "valid-batch.json").read_text(),
            "StagerFunction reads aws:dynamodb",
        ),
        ("ReadApiFunction", json.dumps({"rawPath": "/health"}), "is not an HTTP API request (payload 2.0)"),
    ],
)
def test_a_bad_event_is_one_line(
    function: str, content: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = tmp_path / "event.json"
    event.write_text(content)
    assert main(["invoke", function, "--event", str(event), "--local", "--state-dir", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("devicepipe: ")


def test_an_event_file_that_is_not_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(b"\xff\xfe\x00")
    assert main(["invoke", "IngestFunction", "--event", str(event)]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"devicepipe: cannot read the event file {event}")
