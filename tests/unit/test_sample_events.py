"""The sample events in events/ are what the builders produce (regenerate: python -m devicepipe_tools.events), each
is what its function receives, and events/env.json is the local stack's environment for every function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devicepipe_tools.cli import event_problem
from devicepipe_tools.events import sample_events
from devicepipe_tools.local.env import local_env_vars
from devicepipe_tools.template import ROOT, load_template

#: The folder of events/ each function's samples live in.
FUNCTIONS = {
    "ingest": "IngestFunction",
    "cache_updater": "CacheUpdaterFunction",
    "stager": "StagerFunction",
    "read_api": "ReadApiFunction",
    "loader": "LoaderFunction",
    "reports": "ReportFunction",
}


@pytest.mark.parametrize("rel", sorted(sample_events()))
def test_committed_event_matches_its_builder(rel: str) -> None:
    assert json.loads((ROOT / "events" / rel).read_text()) == sample_events()[rel]


def test_every_committed_event_has_a_builder() -> None:
    committed = {p.relative_to(ROOT / "events").as_posix() for p in (ROOT / "events").rglob("*.json")}
    assert committed - {"env.json"} == set(sample_events())


@pytest.mark.parametrize("rel", sorted(sample_events()))
def test_each_event_is_what_its_function_receives(rel: str) -> None:
    function = FUNCTIONS[rel.split("/", maxsplit=1)[0]]
    assert event_problem(load_template(), function, ROOT / "events" / rel) is None


def stream_records() -> list[tuple[str, dict[str, Any]]]:
    return [
        (rel, record)
        for rel, event in sample_events().items()
        for record in event.get("Records", [])
        if record.get("eventSource") == "aws:dynamodb" and isinstance(record.get("dynamodb"), dict)
    ]


def test_stream_records_carry_the_images_their_view_type_promises() -> None:
    """NEW_AND_OLD_IMAGES: an INSERT has the new image, a MODIFY both, a REMOVE the old one."""
    wanted = {"INSERT": {"NewImage"}, "MODIFY": {"NewImage", "OldImage"}, "REMOVE": {"OldImage"}}
    wrong = [
        (rel, r["eventName"], sorted(r["dynamodb"].keys() & {"NewImage", "OldImage"}))
        for rel, r in stream_records()
        if r["dynamodb"].get("StreamViewType") == "NEW_AND_OLD_IMAGES"
        and r["eventName"] in wanted
        and r["dynamodb"].keys() & {"NewImage", "OldImage"} != wanted[r["eventName"]]
    ]
    assert not wrong, wrong
    assert any(r["eventName"] == "MODIFY" for rel, r in stream_records() if rel.startswith("stager/"))


def test_a_modify_changes_an_item_with_the_same_keys() -> None:
    for rel, r in stream_records():
        images = r["dynamodb"]
        if r["eventName"] == "MODIFY" and "OldImage" in images and "NewImage" in images:
            for key in ("pk", "sk"):
                assert images["OldImage"][key] == images["NewImage"][key] == images["Keys"][key], rel


@pytest.mark.integration  # builds the resources on a moto server, as the local stack does
def test_env_vars_file_is_the_local_stack_on_fixed_ports() -> None:
    """events/env.json: each function's environment on `devicepipe local up --port 4566` (docs/local-stack.md)."""
    committed = json.loads((ROOT / "events" / "env.json").read_text())
    assert committed == local_env_vars()
    template_functions = {
        k for k, v in load_template()["Resources"].items() if v["Type"] == "AWS::Serverless::Function"
    }
    assert set(committed) == template_functions
    ingest = committed["IngestFunction"]
    assert ingest["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566" and ingest["REDIS_URL"] == "redis://127.0.0.1:4567/0"
    assert ingest["QUARANTINE_BUCKET"] == "devicepipe-quarantinebucket-us-east-1"


def test_env_vars_file_is_in_sams_format() -> None:
    doc = json.loads(Path(ROOT / "events" / "env.json").read_text())
    assert all(isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in doc.values())
