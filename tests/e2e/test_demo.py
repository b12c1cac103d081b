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
    # and what was stored reads back through the HTTP API (passing checks, counted above), fresh readings too
    assert {"API latest", "API branches", "API history"} <= {c.name for c in result.checks}
    assert result.figures["freshness_ms"]["us-east-1"]["count"] == 20
    assert result.figures["freshness_ms"]["us-east-1"]["missed"] == 0
    assert result.figures["hit_ratio"]["us-east-1"]["requests"] == 600
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
    # each region's API answers every device's newest reading, every branch and every history
    for check in ("API latest", "API branches", "API history"):
        assert {f"{check} [us-east-1]", f"{check} [eu-west-1]"} <= set(names)
    assert all(result.figures["freshness_ms"][r]["missed"] == 0 for r in ("us-east-1", "eu-west-1"))
    # the warehouse holds each reading once although readings sent to both regions were staged by both, and it
    # loaded them all from the primary's bucket: eu-west-1's staged objects reached it by (emulated) S3 replication
    assert result.figures["warehouse_rows"] == 800 < result.figures["staged_rows"]
    assert 0 < result.figures["staging_replicated"] < result.figures["staged_objects"]
    assert result.figures["replication"]["replicated"] > 800
