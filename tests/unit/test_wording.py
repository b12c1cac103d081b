"""The commands' output worded for people: no ``1 objects``, no ``None ms``, no ``0/0 markers``, no Python dicts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devicepipe_tools import cli, wording
from devicepipe_tools.cache_rebuild import RebuildReport
from devicepipe_tools.local import checks, demo
from devicepipe_tools.local.loader_worker import status_lines
from devicepipe_tools.probe import ProbeResult


def test_counts_are_singular_for_exactly_one() -> None:
    assert [wording.count(n, "object") for n in (0, 1, 2)] == ["0 objects", "1 object", "2 objects"]
    assert wording.count(1, "branch") == "1 branch" and wording.count(3, "branch") == "3 branches"
    assert wording.count(2, "entry") == "2 entries" and wording.count(2, "day") == "2 days"
    assert wording.count(2, "branch view") == "2 branch views" and wording.count(2, "COPY file") == "2 COPY files"


def test_times_not_measured_say_so() -> None:
    assert wording.ms(None) == "n/a" and wording.ms(12.5) == "12.5 ms"
    assert wording.percentiles("latency", {"p50": None, "p99": None}) == "no latency measured"
    assert wording.percentiles("lag", {"p50": 1.0, "p99": 2.0}) == "lag p50 1.0 ms p99 2.0 ms"


def test_fractions_of_nothing_and_mappings() -> None:
    assert wording.fraction(0, 0, "marker") == "no markers"
    assert wording.fraction(1, 1, "marker") == "1/1 marker" and wording.fraction(0, 3, "marker") == "0/3 markers"
    assert wording.by_key({"us-east-1": 22, "eu-west-1": 53}) == "us-east-1 22, eu-west-1 53"
    assert wording.by_key({}) == "none"


def test_a_probe_that_could_write_nothing() -> None:
    line = ProbeResult("eu-west-1", "us-east-1", failures=["write failed"]).line()
    assert (
        line
        == "eu-west-1 -> us-east-1: no markers replicated; no lag measured (target read round trip p50 n/a); 1 failure"
    )


def test_a_rebuild_of_one_device() -> None:
    line = RebuildReport("r", "t", devices=1, written=1, branches=1, pipelines=1, scan_pages=1, seconds=1).line()
    assert "1 device scanned from t/ByBranchLatest in 1 page;" in line
    assert "1 branch view marked loaded; 1 Redis pipeline;" in line


def test_local_status_of_a_first_cycle(tmp_path: Path) -> None:
    now = time.time()
    loader: dict[str, Any] = {
        "cycles": 1,
        "last_cycle_at": now,
        "last_ok_at": now,
        "objects_loaded": 1,
        "copy_files": 1,
    }
    loader |= {"quarantined_objects": 0, "errors": 1, "lag_s": 0.0}
    loader["snapshot"] = {"path": "w.duckdb", "publishes": 1, "published_at": now, "seconds": 0.01}
    (tmp_path / "loader.json").write_text(json.dumps(loader))
    reports = {"runs": 1, "updated_at": now, "last": {"due": 0, "written": 0, "unchanged": 0, "failed": 0}}
    (tmp_path / "reports.json").write_text(json.dumps(reports))
    text = "\n".join(status_lines(tmp_path))
    assert "loader: 1 cycle, " in text and "1 object loaded (as 1 COPY file), 0 objects quarantined" in text
    assert "1 failed cycle;" in text and "published 1 time," in text and "reports: 1 run, " in text


def test_the_demo_summary_prints_no_dicts_and_no_none() -> None:
    result = checks.Result()
    result.figures = {
        "put_records_calls": 1,
        "staged_objects": 1,
        "copy_statements": 1,
        "load_cycles": 1,
        "latency_ms": {"p50": None, "p99": None, "max": None},
        "ingest": {
            "invocations": 1,
            "records_done": 1,
            "function_errors": 0,
            "partial_failures": 0,
            "sent_to_destination": 0,
        },
        "replication": {"replicated": 3, "delay_ms": 5000, "superseded": 0, "lag_ms": {"p50": 5.0, "p99": 9.0}},
        "reading_origins": {"us-east-1": 2, "eu-west-1": 1},
        "latest_regressions": {"us-east-1": 0, "eu-west-1": 1},
    }
    text = demo.render(result)
    assert "{'" not in text and "None ms" not in text, text
    assert "1 PutRecords call," in text and "1 gzip object" in text and "1 COPY statement in 1 load cycle" in text
    assert "1 invocation, 1 record, 0 errors" in text and "no latency (stream -> stored) measured" in text
    assert "readings by origin region: us-east-1 2, eu-west-1 1" in text


def test_reads_of_one_branch_and_one_reading() -> None:
    now = datetime.now(UTC)
    seen = "2026-12-01T00:00:00.000000Z"
    doc = {"branches": [{"branch_id": "b-1", "devices": 1, "last_seen": seen}], "source": "cache", "region": "r"}
    assert cli._render_branches(doc, now).splitlines()[0] == "1 branch (from the cache in r)"
    history = {"device_id": "d-1", "region": "r", "readings": [{"ts": seen, "seq": 0, "metrics": {"t": 1}}]}
    assert cli._render_history(history, now).splitlines()[0] == "d-1: 1 reading, newest first (r)"
