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
