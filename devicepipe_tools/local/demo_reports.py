"""The demo's reports: each branch's report checked against the readings the demo produced.

The demo seeds the registry with the fleet's (``fleet.fleet_registry``), runs ReportFunction's run for the days
its readings fall on, runs it again (nothing may change or be sent twice), then reads every report back through
each region's read API (the other regions get them by the reports bucket's replication). Expected figures are
computed here from the produced readings alone (period = the reading's local day in its branch's time zone), so
the warehouse SQL, the registry join, the delivery and the read route are all under test:
- per branch and period: readings, devices reporting, unregistered and silent devices;
- per device: readings, and for each numeric metric count, min and max exactly and avg to 1e-9 relative.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from devicepipe.config import RegistrySettings
from devicepipe.models import parse_reading
from devicepipe.registry import Registry, read_registry
from devicepipe.report_run import Request
from devicepipe_tools.local.loader_worker import build_report_replicators, build_report_runtime, run_reports
from devicepipe_tools.read_client import ReadClient
from devicepipe_tools.template import load_template


@dataclass
class _Metric:
    count: int = 0
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.total += value


@dataclass
class _Device:
    readings: int = 0
    metrics: dict[str, _Metric] = field(default_factory=lambda: defaultdict(_Metric))


def expected_reports(docs: Iterable[dict[str, Any]], registry: Registry) -> dict[tuple[str, str], dict[str, _Device]]:
    """(branch, period) -> device -> figures, from the readings produced (each distinct reading once)."""
    zones = {b.branch_id: ZoneInfo(b.time_zone) for b in registry.branches}
    names = {m.metric for m in registry.metrics}
    out: dict[tuple[str, str], dict[str, _Device]] = defaultdict(lambda: defaultdict(_Device))
    seen: set[tuple[str, str, int]] = set()
    for doc in docs:
        reading = parse_reading(doc)
        if (key := (reading.device_id, reading.ts, reading.seq)) in seen or reading.branch_id not in zones:
            continue
        seen.add(key)
        ts = datetime.fromisoformat(reading.ts.replace("Z", "+00:00")).astimezone(UTC)
        period = ts.astimezone(zones[reading.branch_id]).date().isoformat()
        device = out[(reading.branch_id, period)][reading.device_id]
        device.readings += 1
        for name, value in doc["metrics"].items():
            if name in names and isinstance(value, int | float) and not isinstance(value, bool):
                device.metrics[name].add(float(value))
    return out


def check_reports(
    reports: Iterable[dict[str, Any]], expected: dict[tuple[str, str], dict[str, _Device]], registry: Registry
) -> list[tuple[str, bool, str]]:
    """``(check, ok, detail)``: every expected (branch, period) has a report whose figures match."""
    by_key = {(r["branch_id"], r["period"]): r for r in reports}
    registered = {d.device_id for d in registry.devices}
    missing = sorted(set(expected) - set(by_key))
    mismatches: list[str] = []
    unregistered = silent = 0
    for key, devices in sorted(expected.items()):
        if (report := by_key.get(key)) is None:
            continue
        mismatches += [f"{key[0]} {key[1]}: {m}" for m in _compare(report, devices)]
        summary = report["summary"]
        want_unregistered = sorted(d for d in devices if d not in registered)
        if summary["unregistered_devices"] != want_unregistered:
            mismatches.append(f"{key}: unregistered {summary['unregistered_devices']} != {want_unregistered}")
        unregistered += len(want_unregistered)
        silent += len(summary["silent_devices"])
    return [
        (
            "reports: one per branch and local day, figures equal to the readings produced",
            not missing and not mismatches,
            f"{len(by_key)} reports for {len(expected)} (branch, day) pairs; {len(missing)} missing"
            + (f" e.g. {missing[0]}" if missing else "")
            + f"; {len(mismatches)} mismatches"
            + (f" e.g. {mismatches[0]}" if mismatches else "")
            + f"; {unregistered} unregistered and {silent} silent devices listed",
        )
    ]


def _compare(report: dict[str, Any], devices: dict[str, _Device]) -> list[str]:
    got = {d["device_id"]: d for d in report["devices"] if d["readings"]}
    problems = []
    if set(got) != set(devices):
        problems.append(f"devices reporting {len(got)} != {len(devices)}")
    if report["summary"]["readings"] != sum(d.readings for d in devices.values()):
        problems.append(f"readings {report['summary']['readings']} != {sum(d.readings for d in devices.values())}")
    for device_id, want in devices.items():
        have = got.get(device_id)
        if have is None:
            continue
        if have["readings"] != want.readings:
            problems.append(f"{device_id} readings {have['readings']} != {want.readings}")
        for name, metric in want.metrics.items():
            figures = have["metrics"].get(name)
            if figures is None or (figures["count"], figures["min"], figures["max"]) != (
                metric.count,
                metric.low,
                metric.high,
            ):
                problems.append(f"{device_id} {name} {figures} != {metric}")
            elif not math.isclose(figures["avg"], metric.total / metric.count, rel_tol=1e-9):
                problems.append(f"{device_id} {name} avg {figures['avg']} != {metric.total / metric.count}")
    return problems


def verify_reports(
    state: dict[str, Any], state_dir: Path, docs: list[dict[str, Any]], registry: Registry
) -> tuple[list[tuple[str, bool, str]], dict[str, Any]]:
    """``(checks, figures)`` of the reports of every day the readings fall on, in every region."""
    checks: list[tuple[str, bool, str]] = []
    stored = read_registry(RegistrySettings(url=state["registry_reader_url"]))
    checks.append(_registry_check(stored, registry))
    template = load_template()
    runtime = build_report_runtime(state, state_dir, template)
    replicators = build_report_replicators(state, template)
    expected = expected_reports(docs, registry)
    days = sorted({period for _, period in expected})
    # Both runs as of one instant: a day still running changes as time passes (its trailing gaps grow), so only
    # the same inputs must give the same report.
    now, started = datetime.now(UTC), time.monotonic()
    first = [run_reports(runtime, replicators, set(), Request(date.fromisoformat(day)), now) for day in days]
    run_s = time.monotonic() - started
    again = [run_reports(runtime, replicators, set(), Request(date.fromisoformat(day)), now) for day in days]
    # The stack's own schedule may have stored some of them already (a finished day without readings): those
    # count as unchanged on the first run too.
    stored = sum(f["written"] + f["unchanged"] for f in first)
    unchanged, resent = sum(f["unchanged"] for f in again), sum(f["notified"] for f in again)
    due = sum(f["due"] for f in first)
    checks.append(
        (
            "reports: every due report delivered once, a re-run writes and sends nothing",
            stored == due and unchanged == due and resent == 0 and not any(f["failures"] for f in first + again),
            f"{due} due, {sum(f['written'] for f in first)} written and {sum(f['notified'] for f in first)} "
            f"notified ({sum(f['unchanged'] for f in first)} already stored by the schedule), then {unchanged} "
            f"unchanged and {resent} notified on the re-run",
        )
    )
    for region, url in state["api_urls"].items():
        api = ReadClient(url)
        reports = [api.get(f"/branches/{branch}/report", {"period": day})["report"] for branch, day in sorted(expected)]
        name, ok, detail = check_reports(reports, expected, registry)[0]
        checks.append((f"{name} ({region} API)", ok, detail))
    figures = {"report_days": days, "reports": due, "report_run_s": round(run_s, 2)}
    return checks, figures


def _registry_check(stored: Registry, seeded: Registry) -> tuple[str, bool, str]:
    same = all(
        sorted(getattr(stored, part), key=repr) == sorted(getattr(seeded, part), key=repr)
        for part in ("branches", "devices", "metrics")
    )
    return (
        "registry: the functions' read-only login reads back what was imported",
        same,
        f"{len(stored.branches)} branches, {len(stored.devices)} devices, {len(stored.metrics)} metric definitions",
    )
