"""The demo, small: produce through the real producer, drain through the local ESM, check every stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicepipe_tools.local.demo import POISON_PILLS, render, run_demo

pytestmark = pytest.mark.e2e


def test_small_demo_is_consistent(tmp_path: Path) -> None:
    # Given a fresh stack, When the demo produces 600 readings and the poison pills
    result = run_demo(readings=600, devices=40, branches=5, state_dir=tmp_path / "demo", say=lambda _: None)
    # Then every check passes and the figures add up
    report = render(result)
    assert result.consistent, report
    assert result.figures["readings_stored"] == 600
    assert result.figures["quarantined"] == len(POISON_PILLS)
    assert result.figures["latest_items"] == 40
    assert result.figures["cached_devices"] == 40
    assert result.figures["staged_rows"] == 600
    assert result.figures["latency_ms"]["count"] == 600 + len(POISON_PILLS)
    assert "verdict: CONSISTENT" in report
    assert not (tmp_path / "demo" / "state.json").exists()  # the stack was stopped


def test_small_two_region_demo_converges(tmp_path: Path) -> None:
    # Given both regions, replicating more slowly than a local ingest takes (so their writes race)
    result = run_demo(
        readings=800,
        devices=30,
        branches=4,
        regions=("us-east-1", "eu-west-1"),
        replication_delay_s=4.0,
        in_every_region=0.1,
        state_dir=tmp_path / "demo2",
        say=lambda _: None,
    )
    # When the demo produces to both at once, Then every check passes in both regions
    report = render(result)
    assert result.consistent, report
    names = [c.name for c in result.checks]
    assert "tables: every region's replica holds the same items" in names
    assert sum(1 for n in names if n.startswith("cache [")) == 2
    # the warehouse holds each reading once although readings sent to both regions were staged by both
    assert result.figures["warehouse_rows"] == 800 < result.figures["staged_rows"]
    assert result.figures["replication"]["replicated"] > 800
