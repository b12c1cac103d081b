"""The sample events in events/ are what the builders produce (regenerate: python -m devicepipe_tools.events)."""

from __future__ import annotations

import json

import pytest

from devicepipe_tools.events import sample_events
from devicepipe_tools.template import ROOT


@pytest.mark.parametrize("rel", sorted(sample_events()))
def test_committed_event_matches_its_builder(rel: str) -> None:
    assert json.loads((ROOT / "events" / rel).read_text()) == sample_events()[rel]


def test_every_committed_event_has_a_builder() -> None:
    committed = {p.relative_to(ROOT / "events").as_posix() for p in (ROOT / "events").rglob("*.json")}
    assert committed == set(sample_events())
