"""Branch reports: per branch and local day, computed in the warehouse (Redshift SQL over ``readings``) and joined
with the registry.

**Periods.** A period is one day in the branch's time zone (``period_window``): [local midnight, next local
midnight) in UTC, so 23 h or 25 h on a DST change. ``due_periods`` names each branch's last completed days: the
report job re-runs recent days, so readings loaded late (a device that buffered while offline, a delayed load)
update the figures. A report is ``final`` once ``final_after_s`` (default a day) has passed since its period
ended: re-runs after that are not scheduled, and its figures are the ones delivered.

**Exactly once.** ``readings`` holds one row per ``(device_id, ts, seq)`` (the loader's MERGE), and a reading
both regions wrote is staged once, by its origin region; so counting rows counts each reading once.

**The registry extract, not a federated query.** Each run writes the registry (branches' periods, devices,
metric definitions) as three small gzip JSON-lines files and COPYs them into permanent ``report_*`` tables in one
transaction, the way the loader COPYs its ledger file, so no statement grows with the registry (the Data API
refuses statements over 100 KB). A Redshift federated query to Aurora PostgreSQL was the alternative; it needs
network routes and security groups from the Redshift workgroup into the Aurora VPC, a Secrets Manager secret for
Redshift, an Aurora endpoint reachable from the warehouse's region (the warehouse is one, the registry's readers
are per region: https://docs.aws.amazon.com/redshift/latest/dg/federated-overview.html,
https://docs.aws.amazon.com/redshift/latest/dg/federated-limitations.html), and it would put Aurora's
availability inside every report query. The registry is small (thousands of rows), and the function already reads
it from its own region's cluster, so shipping it costs one COPY per table. Rows carry the run's id: concurrent
runs (the schedule and an on-demand request) never see each other's extract, and rows older than a day are
deleted by later runs.

**The SQL** (Redshift's dialect, run as is on Redshift and translated for DuckDB locally) is two queries per run,
whatever the fleet size; each scans the requested windows once:

- activity: per (branch, period, device) the reading count, first and last reading, and every interval between
  consecutive readings (and from the period start to the first) longer than the gap threshold (LAG/LEAD);
- metrics: per (branch, period, device, metric) count, min, max, avg, p95 and out-of-range count. Each
  registered metric name is navigated with PartiQL once per reading (``r.metrics."temp"``), and only JSON numbers
  count (``JSON_TYPEOF``: a string such as ``"door": "open"`` is not a numeric metric); the numbers are then
  unpivoted into rows by a CROSS JOIN with the extract's metric names, so one PERCENTILE_CONT serves every metric
  (Redshift requires the sort-based aggregates of one statement to share their ORDER BY).

The gap at the end of a period (last reading to the period end, or to ``now`` for a period still running) and a
silent device's whole-window gap are added here, from the same threshold.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from devicepipe.registry import METRIC, Branch, Device, MetricDefinition, Registry
from devicepipe.warehouse import Warehouse, quote

SCHEMA_VERSION = 1
#: Extract rows older than this are deleted by later runs (a run's own rows serve only that run's queries).
EXTRACT_RETENTION = timedelta(days=1)

# Small registry tables: DISTSTYLE ALL keeps a copy on every node, so joining them to readings moves no rows
# (https://docs.aws.amazon.com/redshift/latest/dg/c_choosing_dist_sort.html).
REPORT_DDL: dict[str, str] = {
    "report_periods": """CREATE TABLE IF NOT EXISTS report_periods (
    run_id VARCHAR(32) NOT NULL,
    extracted_at TIMESTAMP NOT NULL,
    branch_id VARCHAR(128) NOT NULL,
    period DATE NOT NULL,
    period_start TIMESTAMP NOT NULL,
    period_end TIMESTAMP NOT NULL
) DISTSTYLE ALL""",
    "report_devices": """CREATE TABLE IF NOT EXISTS report_devices (
    run_id VARCHAR(32) NOT NULL,
    extracted_at TIMESTAMP NOT NULL,
    device_id VARCHAR(128) NOT NULL,
    branch_id VARCHAR(128) NOT NULL,
    kind VARCHAR(64) NOT NULL,
    installed_on DATE,
    retired_on DATE
) DISTSTYLE ALL""",
    "report_metrics": """CREATE TABLE IF NOT EXISTS report_metrics (
    run_id VARCHAR(32) NOT NULL,
    extracted_at TIMESTAMP NOT NULL,
    kind VARCHAR(64) NOT NULL,
    metric VARCHAR(63) NOT NULL,
    unit VARCHAR(65535),  -- free text in the registry
    low DOUBLE PRECISION,
    high DOUBLE PRECISION
) DISTSTYLE ALL""",
}
#: This run's rows (a retried run) and stale rows of earlier runs; a concurrent run's rows stay.
EXTRACT_DELETE = "DELETE FROM {table} WHERE run_id = '{run_id}' OR extracted_at < CAST('{stale}' AS TIMESTAMP)"
# Without MANIFEST, FROM is a key prefix; the extract's names end the key, so each names one object
# (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html). JSON 'auto' maps keys to
# the tables' lower-case column names (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json).
EXTRACT_COPY = "COPY {table} FROM '{url}' IAM_ROLE '{role_arn}' FORMAT JSON 'auto' GZIP TIMEFORMAT 'auto'"

# The readings of each requested (branch, period): the reading's own branch_id, inside the period's UTC window. The
# literal bounds (all windows' span) let Redshift skip blocks by their zone maps on ts
# (https://docs.aws.amazon.com/redshift/latest/dg/t_Sorting_data.html).
_WINDOWED = """FROM report_periods AS p
    JOIN readings AS r ON r.branch_id = p.branch_id AND r.ts >= p.period_start AND r.ts < p.period_end
    WHERE p.run_id = '{run_id}' AND r.ts >= CAST('{low}' AS TIMESTAMP) AND r.ts < CAST('{high}' AS TIMESTAMP)"""
_DEVICE = "PARTITION BY p.branch_id, p.period, r.device_id"
# LAG takes no default in Redshift, hence COALESCE for the period start
# (https://docs.aws.amazon.com/redshift/latest/dg/r_WF_LAG.html); DATEDIFF counts microsecond boundaries, exact
# at TIMESTAMP's microsecond precision (https://docs.aws.amazon.com/redshift/latest/dg/r_DATEDIFF_function.html,
# https://docs.aws.amazon.com/redshift/latest/dg/r_Dateparts_for_datetime_functions.html). Rows returned: each
# device's last reading (with its count and first reading) and every reading that ends a gap.
ACTIVITY_SQL = f"""SELECT a.branch_id, a.period, a.device_id, a.gap_from, a.ts, a.is_last, a.n_readings, a.first_seen
FROM (
    SELECT p.branch_id, p.period, r.device_id, r.ts,
        COALESCE(LAG(r.ts) OVER ({_DEVICE} ORDER BY r.ts, r.seq), p.period_start) AS gap_from,
        CASE WHEN LEAD(r.ts) OVER ({_DEVICE} ORDER BY r.ts, r.seq) IS NULL THEN 1 ELSE 0 END AS is_last,
        COUNT(*) OVER ({_DEVICE}) AS n_readings,
        MIN(r.ts) OVER ({_DEVICE}) AS first_seen
    {_WINDOWED}
) AS a
WHERE a.is_last = 1 OR DATEDIFF(microsecond, a.gap_from, a.ts) > {{gap_us}}"""  # noqa: S608 (values: ours, below)
# Each registered metric is navigated once per reading (``r.metrics."temp_c"``: a missing attribute is NULL in the
# default lax mode, https://docs.aws.amazon.com/redshift/latest/dg/query-super.html) and kept only if it is a JSON
# number (https://docs.aws.amazon.com/redshift/latest/dg/r_json_typeof.html); the numbers are then unpivoted into
# rows by a CROSS JOIN with the extract's metric names, so that one PERCENTILE_CONT serves every metric: "If a
# statement includes multiple calls to sort-based aggregate functions (LISTAGG, PERCENTILE_CONT, or MEDIAN), they
# must all use the same ORDER BY values" (https://docs.aws.amazon.com/redshift/latest/dg/r_PERCENTILE_CONT.html;
# it is compute-node only, and this query references user tables as that requires:
# https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions_compute_node_only.html). A threshold the kind
# does not define is NULL, so its comparison is never true. The joins are LEFT and on non-SUPER columns: SUPER
# may not be used in right or full outer joins (https://docs.aws.amazon.com/redshift/latest/dg/limitations-super.html).
METRICS_SQL = f"""SELECT v.branch_id, v.period, v.device_id, v.metric, COUNT(*) AS n_values, MIN(v.num) AS min_value,
    MAX(v.num) AS max_value, AVG(v.num) AS avg_value, PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY v.num) AS p95,
    SUM(CASE WHEN v.num < m.low OR v.num > m.high THEN 1 ELSE 0 END) AS out_of_range
FROM (
    SELECT x.branch_id, x.period, x.device_id, n.metric, CASE n.metric {{whens}} END AS num
    FROM (
        SELECT p.branch_id, p.period, r.device_id, {{numbers}}
        {_WINDOWED}
    ) AS x
    CROSS JOIN (SELECT DISTINCT rm.metric FROM report_metrics AS rm WHERE rm.run_id = '{{run_id}}') AS n
) AS v
LEFT JOIN report_devices AS d ON d.device_id = v.device_id AND d.run_id = '{{run_id}}'
LEFT JOIN report_metrics AS m ON m.kind = d.kind AND m.metric = v.metric AND m.run_id = '{{run_id}}'
WHERE v.num IS NOT NULL
GROUP BY v.branch_id, v.period, v.device_id, v.metric"""  # noqa: S608 (values: ours, below)
_NUMBER = """CASE WHEN JSON_TYPEOF(r.metrics."{name}") = 'number' THEN CAST(r.metrics."{name}" AS DOUBLE PRECISION) END
            AS m_{name}"""
# Every value formatted into these statements is the run's own: a hex run id, timestamps and an int formatted
# here, metric names checked against the registry's identifier pattern, S3 URLs and the role ARN quoted.

#: A metric's figures, in the document's order (``out_of_range`` last).
METRIC_FIELDS = ("unit", "count", "min", "max", "avg", "p95", "low", "high", "out_of_range")
_DEVICE_COLUMNS = ("device_id", "kind", "registered", "readings", "first_seen", "last_seen", "gaps", "gap_seconds")
CSV_COLUMNS = ("branch_id", "period", *_DEVICE_COLUMNS, "metric", *METRIC_FIELDS)

Period = tuple[str, date]
PutExtract = Callable[[str, bytes], str]


def period_window(day: date, tz: str) -> tuple[datetime, datetime]:
    """The UTC instants [start, end) of a local day in ``tz`` (an IANA name): 23 h or 25 h across a DST change.

    A midnight the zone skips (a DST change at 00:00) starts the day at the first instant that exists.
    """
    zone = ZoneInfo(tz)
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    return start, end


def due_periods(registry: Registry, now: datetime, lookback_days: int = 2) -> list[Period]:
    """Each branch's last ``lookback_days`` completed local days, oldest first, branches in registry order.

    Re-running recent days picks up readings loaded late; see the module docstring for when a period is final.
    """
    now = _aware(now)
    periods = []
    for branch in registry.branches:
        today = now.astimezone(ZoneInfo(branch.time_zone)).date()
        periods += [(branch.branch_id, today - timedelta(days=k)) for k in range(lookback_days, 0, -1)]
    return periods


@dataclass(frozen=True)
class _Window:
    branch: Branch
    day: date
    start: datetime
    end: datetime


@dataclass
class _Activity:
    readings: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    candidates: list[tuple[datetime, datetime]] = field(default_factory=list)  # gaps before the threshold test


def compute_reports(
    warehouse: Warehouse,
    registry: Registry,
    periods: Sequence[Period],
    put_extract: PutExtract,
    role_arn: str,
    now: datetime,
    gap_threshold_s: int = 900,
    final_after_s: int = 86400,
) -> list[dict[str, Any]]:
    """One report document per requested (branch, period), in the order requested (duplicates once).

    Parameters
    ----------
    warehouse
        Redshift (Data API) or the local DuckDB warehouse: one transaction loads the registry extract, then two
        queries compute every requested report.
    registry
        Branches (time zones), devices (kind, installed/retired dates) and metric definitions.
    periods
        ``(branch_id, local day)`` pairs; every branch must be in the registry.
    put_extract
        Stores an extract file (``name``: the table and the run's id, unique per run; body: gzip JSON lines) in
        the warehouse's region and returns its ``s3://`` URL. No other key may start with that URL's key (COPY
        without MANIFEST loads every object under it).
    role_arn
        The IAM role the warehouse's COPY assumes to read the extract.
    now
        The run's time (timezone-aware): it ends a running period's last gap and decides ``final``.
    gap_threshold_s
        A device is in a gap when no reading came for longer than this.
    final_after_s
        A report is final once its period ended this long ago.

    Returns
    -------
    list of dict
        Schema 1: branch, period and its UTC window, ``generated_at``, ``final``, ``gap_threshold_s``; ``summary``
        (readings, devices expected/reporting, silent and unregistered device ids, out-of-range count); ``devices``
        by id (expected or reporting), each with kind, registered, readings, first/last seen, gaps and per numeric
        metric unit, count, min, max, avg, p95, low, high, out_of_range. Times are ISO-8601 UTC with ``Z``.
        Expected: the branch's registry devices installed on or before the day and not retired before it.
        Reporting: every device with a reading whose ``branch_id`` is the branch, registered or not.

    Raises
    ------
    ValueError
        A naive ``now``, an unknown branch, or a metric name that is not an identifier.
    LoadFailed
        The warehouse failed (``retryable`` says whether a later run may succeed).
    """
    now = _aware(now)
    windows = _windows(registry, periods)
    if not windows:
        return []
    names = _metric_names(registry.metrics)
    run_id = uuid.uuid4().hex
    warehouse.execute(_extract_statements(registry, windows, run_id, now, put_extract, role_arn))
    low, high = min(w.start for w in windows), max(w.end for w in windows)
    bounds = {"run_id": run_id, "low": _sql_time(low), "high": _sql_time(high)}
    activity = _activity(warehouse.query(activity_sql(bounds, gap_threshold_s)))
    metrics = _metrics(warehouse.query(metrics_sql(bounds, names))) if names else {}
    context = _Context(registry, now, timedelta(seconds=gap_threshold_s), timedelta(seconds=final_after_s))
    return [context.document(w, activity, metrics) for w in windows]


def _extract_statements(
    registry: Registry,
    windows: Sequence[_Window],
    run_id: str,
    now: datetime,
    put_extract: PutExtract,
    role_arn: str,
) -> list[str]:
    """Store the extract files and return the one transaction that loads them (LOCK serialises report runs)."""
    stale = _sql_time(now - EXTRACT_RETENTION)
    statements = [*REPORT_DDL.values(), "LOCK " + ", ".join(REPORT_DDL)]
    for table, rows in _extract_rows(registry, windows, run_id, now).items():
        # The run's id in the name: a concurrent run's files never replace this run's before its COPY.
        url = put_extract(f"{table}-{run_id}", extract_document(rows))
        statements.append(EXTRACT_DELETE.format(table=table, run_id=run_id, stale=stale))
        statements.append(EXTRACT_COPY.format(table=table, url=quote(url), role_arn=quote(role_arn)))
    return statements


def extract_document(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Gzip JSON lines, one object per row (COPY ... FORMAT JSON 'auto' GZIP)."""
    lines = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    return gzip.compress(lines.encode(), mtime=0)


def activity_sql(bounds: Mapping[str, str], gap_threshold_s: int) -> str:
    return ACTIVITY_SQL.format(gap_us=int(gap_threshold_s) * 1_000_000, **bounds)


def metrics_sql(bounds: Mapping[str, str], names: Sequence[str]) -> str:
    """The metrics query: it grows with the registry's metric names (about 190 bytes a name, so some 500 names
    fit the Data API's 100 KB), never with the fleet."""
    numbers = ",\n            ".join(_NUMBER.format(name=name) for name in names)
    whens = " ".join(f"WHEN '{name}' THEN x.m_{name}" for name in names)
    return METRICS_SQL.format(numbers=numbers, whens=whens, **bounds)


def _extract_rows(
    registry: Registry, windows: Sequence[_Window], run_id: str, now: datetime
) -> dict[str, list[dict[str, Any]]]:
    stamp = {"run_id": run_id, "extracted_at": _sql_time(now)}
    return {
        "report_periods": [
            {**stamp, "branch_id": w.branch.branch_id, "period": w.day.isoformat()}
            | {"period_start": _sql_time(w.start), "period_end": _sql_time(w.end)}
            for w in windows
        ],
        "report_devices": [
            {**stamp, "device_id": d.device_id, "branch_id": d.branch_id, "kind": d.kind}
            | {"installed_on": _iso_date(d.installed_on), "retired_on": _iso_date(d.retired_on)}
            for d in registry.devices
        ],
        "report_metrics": [
            {**stamp, "kind": m.kind, "metric": m.metric, "unit": m.unit, "low": m.low, "high": m.high}
            for m in registry.metrics
        ],
    }


def _windows(registry: Registry, periods: Sequence[Period]) -> list[_Window]:
    branches = {b.branch_id: b for b in registry.branches}
    unknown = sorted({branch_id for branch_id, _ in periods} - branches.keys())
    if unknown:
        raise ValueError(f"branches not in the registry: {unknown}")
    windows = []
    for branch_id, day in dict.fromkeys(periods):
        branch = branches[branch_id]
        windows.append(_Window(branch, day, *period_window(day, branch.time_zone)))
    return windows


def _metric_names(definitions: Iterable[MetricDefinition]) -> list[str]:
    """The names the SQL navigates: identifiers (checked again here, as they enter the SQL), quoted there anyway
    since a reserved word such as ``open`` is a valid name (https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html)."""
    names = sorted({m.metric for m in definitions})
    bad = [name for name in names if not METRIC.fullmatch(name)]
    if bad:
        raise ValueError(f"metric names must match {METRIC.pattern}: {bad}")
    return names


def _activity(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, date, str], _Activity]:
    found: dict[tuple[str, date, str], _Activity] = defaultdict(_Activity)
    for branch_id, period, device_id, gap_from, ts, is_last, readings, first_seen in rows:
        act = found[(branch_id, _as_date(period), device_id)]
        act.candidates.append((_as_utc(gap_from), _as_utc(ts)))
        if int(is_last):
            act.readings, act.first_seen, act.last_seen = int(readings), _as_utc(first_seen), _as_utc(ts)
    return found


def _metrics(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, date, str], dict[str, dict[str, Any]]]:
    found: dict[tuple[str, date, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for branch_id, period, device_id, metric, count, low, high, avg, p95, out_of_range in rows:
        found[(branch_id, _as_date(period), device_id)][metric] = {
            "count": int(count),
            "min": float(low),
            "max": float(high),
            "avg": float(avg),
            "p95": float(p95),
            "out_of_range": int(out_of_range),
        }
    return found


@dataclass(frozen=True)
class _Context:
    """What every document of one run shares: the registry's lookups, the clock and the thresholds."""

    registry: Registry
    now: datetime
    gap: timedelta
    final_after: timedelta

    @cached_property
    def devices(self) -> dict[str, Device]:
        return {d.device_id: d for d in self.registry.devices}

    @cached_property
    def definitions(self) -> dict[tuple[str, str], MetricDefinition]:
        return {(m.kind, m.metric): m for m in self.registry.metrics}

    def document(
        self,
        w: _Window,
        activity: Mapping[tuple[str, date, str], _Activity],
        metrics: Mapping[tuple[str, date, str], dict[str, dict[str, Any]]],
    ) -> dict[str, Any]:
        branch_id = w.branch.branch_id
        known = self.devices
        expected = {d.device_id for d in known.values() if d.branch_id == branch_id and _in_service(d, w.day)}
        reporting = {dev for (b, day, dev) in activity if (b, day) == (branch_id, w.day)}
        devices = [
            self._device(w, known.get(device_id), device_id, activity, metrics)
            for device_id in sorted(expected | reporting)
        ]
        summary = {
            "readings": sum(d["readings"] for d in devices),
            "devices_expected": len(expected),
            "devices_reporting": len(reporting),
            "silent_devices": sorted(expected - reporting),
            "unregistered_devices": sorted(reporting - known.keys()),
            "out_of_range": sum(m["out_of_range"] for d in devices for m in d["metrics"].values()),
        }
        return {
            "schema": SCHEMA_VERSION,
            "branch_id": branch_id,
            "branch_name": w.branch.name,
            "time_zone": w.branch.time_zone,
            "period": w.day.isoformat(),
            "period_start": iso(w.start),
            "period_end": iso(w.end),
            "generated_at": iso(self.now),
            "final": self.now >= w.end + self.final_after,
            "gap_threshold_s": int(self.gap.total_seconds()),
            "summary": summary,
            "devices": devices,
        }

    def _device(
        self,
        w: _Window,
        device: Device | None,
        device_id: str,
        activity: Mapping[tuple[str, date, str], _Activity],
        metrics: Mapping[tuple[str, date, str], dict[str, dict[str, Any]]],
    ) -> dict[str, Any]:
        key = (w.branch.branch_id, w.day, device_id)
        act = activity.get(key, _Activity())
        kind = device.kind if device else None
        return {
            "device_id": device_id,
            "kind": kind,
            "registered": device is not None,
            "readings": act.readings,
            "first_seen": iso(act.first_seen) if act.first_seen else None,
            "last_seen": iso(act.last_seen) if act.last_seen else None,
            "gaps": self._gaps(w, act),
            "metrics": {
                name: self._metric(kind, name, figures) for name, figures in sorted(metrics.get(key, {}).items())
            },
        }

    def _gaps(self, w: _Window, act: _Activity) -> list[dict[str, Any]]:
        """The SQL's candidates plus the end of the observed window: the last reading's (or, for a silent
        device, the period start's) distance to min(period end, now)."""
        until = min(w.end, self.now)
        tail = [(act.last_seen or w.start, until)]
        spans = sorted(set(act.candidates + tail))
        return [
            {"from": iso(start), "to": iso(end), "seconds": (end - start).total_seconds()}
            for start, end in spans
            if end - start > self.gap
        ]

    def _metric(self, kind: str | None, name: str, figures: Mapping[str, Any]) -> dict[str, Any]:
        definition = self.definitions.get((kind, name)) if kind else None
        unit, low, high = (definition.unit, definition.low, definition.high) if definition else (None, None, None)
        found = {**figures, "unit": unit, "low": low, "high": high}
        return {k: found[k] for k in METRIC_FIELDS}


def _in_service(device: Device, day: date) -> bool:
    """Expected on ``day``: installed on or before it, and not retired before it."""
    installed = device.installed_on is None or device.installed_on <= day
    return installed and (device.retired_on is None or device.retired_on >= day)


# --- rendering -----------------------------------------------------------------------------------------------------


def render_csv(report: Mapping[str, Any]) -> str:
    """One row per device and metric (a device without numeric metrics: one row, metric columns empty), with a
    header; RFC 4180 (CRLF line ends, quoting by the csv module)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for device in report["devices"]:
        head = [
            report["branch_id"],
            report["period"],
            device["device_id"],
            device["kind"],
            device["registered"],
            device["readings"],
            device["first_seen"],
            device["last_seen"],
            len(device["gaps"]),
            sum(g["seconds"] for g in device["gaps"]),
        ]
        metrics = device["metrics"].items() or [(None, {})]
        for name, m in metrics:
            tail = [name, *(m.get(k) for k in METRIC_FIELDS)]
            writer.writerow([_csv_cell(v) for v in head + tail])
    return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2330}h1{font-size:1.4rem;margin:0 0 .25rem}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}table{border-collapse:collapse;margin:.25rem 0}
th,td{border:1px solid #d5d9e0;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f1f3f6}
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#a4161a;font-weight:600}.muted{color:#6b7280}"""


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained page: every value escaped, inline CSS only, no script, no external asset (the CSP says so)."""
    s = report["summary"]
    title = f"{report['branch_name']} ({report['branch_id']}): {report['period']}"
    status = "final" if report["final"] else "provisional: later readings may still change it"
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>Branch report {_h(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Branch report: {_h(title)}</h1>",
        f'<p class="muted">{_h(report["period_start"])} to {_h(report["period_end"])} '
        f"(local day in {_h(report['time_zone'])}); generated {_h(report['generated_at'])}; {_h(status)}; "
        f"gaps are silences over {_h(report['gap_threshold_s'])} s.</p>",
        "<h2>Summary</h2>",
        _table(
            ["readings", "devices expected", "devices reporting", "silent", "unregistered", "out of range"],
            [
                [
                    s["readings"],
                    s["devices_expected"],
                    s["devices_reporting"],
                    len(s["silent_devices"]),
                    len(s["unregistered_devices"]),
                    s["out_of_range"],
                ]
            ],
        ),
        _id_list("Silent devices (expected, no reading)", s["silent_devices"]),
        _id_list("Unregistered devices (reporting, not in the registry)", s["unregistered_devices"]),
        "<h2>Devices</h2>",
        _table(
            ["device", "kind", "readings", "first seen", "last seen", "gaps", "seconds in gaps"],
            [
                [
                    d["device_id"],
                    d["kind"] if d["registered"] else "unregistered",
                    d["readings"],
                    d["first_seen"],
                    d["last_seen"],
                    len(d["gaps"]),
                    sum(g["seconds"] for g in d["gaps"]),
                ]
                for d in report["devices"]
            ],
        ),
        "<h2>Metrics</h2>",
        _table(
            ["device", "metric", "unit", "count", "min", "max", "avg", "p95", "low", "high", "out of range"],
            [
                [d["device_id"], name, *(m[k] for k in METRIC_FIELDS[:-1]), _Bad(m["out_of_range"])]
                for d in report["devices"]
                for name, m in d["metrics"].items()
            ],
        ),
        "<h2>Gaps</h2>",
        _table(
            ["device", "from", "to", "seconds"],
            [[d["device_id"], g["from"], g["to"], g["seconds"]] for d in report["devices"] for g in d["gaps"]],
        ),
        "</body></html>\n",
    ]
    return "\n".join(parts)


@dataclass(frozen=True)
class _Bad:
    """A count shown in red when above zero."""

    value: int


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return '<p class="muted">None.</p>'
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, _Bad):
        return f'<td class="n{" bad" if value.value else ""}">{value.value}</td>'
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="n">{_h(_number(value))}</td>'
    return f"<td>{_h('' if value is None else value)}</td>"


def _id_list(title: str, ids: Sequence[str]) -> str:
    if not ids:
        return ""
    return f"<h2>{_h(title)}</h2><p>{_h(', '.join(ids))}</p>"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _h(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- times -----------------------------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` (fractions only when present)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC)


def _sql_time(moment: datetime) -> str:
    """A TIMESTAMP literal (UTC, no zone), as readings.ts stores it."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _iso_date(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _as_utc(value: datetime | str) -> datetime:
    """A warehouse TIMESTAMP (UTC, naive): a datetime from DuckDB, a string from the Data API."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
