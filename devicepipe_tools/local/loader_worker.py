"""The local stack's schedules: LoaderFunction's and ReportFunction's logic on DuckDB, in the primary region.

In AWS EventBridge schedules invoke LoaderFunction and ReportFunction, whose handlers build on the Redshift Data
API. Locally the same ``Loader`` runs with the DuckDB warehouse (``.local/.../warehouse.duckdb``) instead, every
few seconds, in the primary region, over the primary region's staging bucket, as the primary stack's loader
does; the report run (``devicepipe.report_run``, as ReportFunction runs it) on the same warehouse, the local PostgreSQL
registry and moto's S3 and SNS, every ``--report-interval`` seconds. The other regions' staged readings reach
the primary's bucket, and its reports the other regions' report buckets, as in AWS through S3 replication, which
the worker stands in for (``staging_replication``: how it differs from S3's is said there).

This process is the warehouse's one writer. Readers open the snapshot it publishes after each cycle that changed
the warehouse (``warehouse_snapshot``); ``loader.json`` holds its totals, last cycle, lag, last error and snapshot,
which ``local status`` prints (``status_lines``).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devicepipe.config import RegistrySettings, ReportSettings
from devicepipe.delivery import S3_CONFIG
from devicepipe.loader import Loader, Source
from devicepipe.registry import read_registry
from devicepipe.report_run import Request, Runtime, run
from devicepipe.retry import Deadline
from devicepipe_tools import wording
from devicepipe_tools.local import files
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.files import read_json, write_json
from devicepipe_tools.local.outage import down_regions
from devicepipe_tools.local.resources import RegionResources, clients, function_env
from devicepipe_tools.local.staging_replication import StagingReplicator, replication_prefixes
from devicepipe_tools.local.warehouse_snapshot import SnapshotPublisher, reader
from devicepipe_tools.template import load_template


def build_loader(state: dict[str, object], state_dir: Path, max_objects: int = 500, snapshot: bool = False) -> Loader:
    """The loader of a local stack (its DuckDB file, the primary region's staging bucket); with ``snapshot``, over
    the readers' snapshot, read-only: for listing loads without touching the writer's file."""
    regions: dict[str, dict[str, dict[str, str]]] = state["regions"]  # type: ignore[assignment]
    primary = next(iter(regions))
    s3 = clients(str(state["endpoint"]), primary, "s3")["s3"]
    warehouse = (
        reader(state_dir / files.WAREHOUSE_SNAPSHOT, s3)
        if snapshot
        else DuckDBWarehouse(state_dir / files.WAREHOUSE, s3)
    )
    bucket = regions[primary]["names"]["StagingBucket"]
    return Loader(s3, warehouse, Source(bucket, primary), bucket, max_objects=max_objects, region=primary)


def build_report_runtime(state: dict[str, Any], state_dir: Path, template: dict[str, Any]) -> Runtime:
    """ReportFunction's run of a local stack: its settings resolved as the primary region's function gets them,
    over the local stack's DuckDB warehouse, registry (the read-only login) and moto."""
    primary, names = next(iter(state["regions"].items()))
    res = RegionResources(**names)
    settings = ReportSettings.from_env({**function_env(template, "ReportFunction", res), "AWS_REGION": primary})
    s3 = clients(str(state["endpoint"]), primary, "s3", config=S3_CONFIG)["s3"]
    sns = clients(str(state["endpoint"]), primary, "sns")["sns"]
    warehouse = DuckDBWarehouse(state_dir / files.WAREHOUSE, s3)

    reader = RegistrySettings(url=state["registry_reader_url"])
    return Runtime(settings, warehouse, s3, sns, Deadline.unlimited(), lambda: read_registry(reader))


def build_report_replicators(state: dict[str, Any], template: dict[str, Any]) -> dict[str, StagingReplicator]:
    """The primary's reports into each other region's reports bucket, as the primary stack's replication rule
    copies them (so that every region's read API serves every report)."""
    regions: dict[str, dict[str, dict[str, str]]] = state["regions"]
    primary, *secondaries = regions
    source = clients(str(state["endpoint"]), primary, "s3")["s3"]
    return {
        f"{primary}/{region}/{prefix}": StagingReplicator(
            source,
            regions[primary]["names"]["ReportsBucket"],
            clients(str(state["endpoint"]), region, "s3")["s3"],
            regions[region]["names"]["ReportsBucket"],
            prefix,
        )
        for region in secondaries
        for prefix in replication_prefixes(template, primary, "ReportsBucket")
    }


def build_staging_replicators(state: dict[str, object], template: dict[str, Any]) -> dict[str, StagingReplicator]:
    """One replicator per secondary region and rule prefix: its staging bucket -> the primary's, as the
    secondary stack's replication configuration does it."""
    regions: dict[str, dict[str, dict[str, str]]] = state["regions"]  # type: ignore[assignment]
    primary, *secondaries = regions
    target = clients(str(state["endpoint"]), primary, "s3")["s3"]
    out = {}
    for region in secondaries:
        source = clients(str(state["endpoint"]), region, "s3")["s3"]
        for prefix in replication_prefixes(template, region):
            out[f"{region}/{prefix}"] = StagingReplicator(
                source,
                regions[region]["names"]["StagingBucket"],
                target,
                regions[primary]["names"]["StagingBucket"],
                prefix,
            )
    return out


def replicate_staging(replicators: dict[str, StagingReplicator], down: set[str]) -> int:
    """Run every replicator whose source region is up (a down region's objects wait, as with S3)."""
    return sum(r.run() for name, r in replicators.items() if name.split("/", 1)[0] not in down)


def run_reports(
    runtime: Runtime,
    replicators: dict[str, StagingReplicator],
    down: set[str],
    request: Request | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One report run (the schedule's due periods unless ``request`` says otherwise) as of ``now`` (the clock's
    by default), then the replication of reports into every region that is up; the run's figures."""
    started = time.monotonic()
    run_id = f"local-{int(time.time() * 1000)}"
    summary, due = run(runtime, request or Request(), now or datetime.now(UTC), run_id)
    replicated = sum(r.run() for name, r in replicators.items() if name.split("/")[1] not in down)
    return {**asdict(summary), "due": due, "replicated": replicated, "seconds": round(time.monotonic() - started, 2)}


#: Counters of ``loader.json``, summed over the worker's life.
_TOTALS = (
    "cycles",  # cycles whose load ran through (a deferred manifest included)
    "objects_loaded",
    "copies",
    "copy_files",  # files those COPYs read: staged objects joined (devicepipe.compaction)
    "copy_bytes",
    "quarantined_objects",
    "deferred",
    "errors",  # cycles whose load raised
    "staging_replicated",  # objects copied from the other regions' staging buckets
    "staging_replication_errors",
    "snapshot_errors",
)


def load_cycle(
    loader: Loader,
    replicators: dict[str, StagingReplicator],
    publisher: SnapshotPublisher,
    down: set[str],
    doc: dict[str, Any],
) -> None:
    """One scheduled cycle into ``doc`` (``loader.json``): S3 replication's stand-in first, so that the load sees
    what replicated since the last cycle, then the load, then the readers' snapshot if the load changed anything.
    A failed step is simply run again on the next tick, as the schedule would in AWS."""
    doc["failing"] = False
    try:
        doc["staging_replicated"] += replicate_staging(replicators, down)
    except Exception as exc:  # the objects stay in their source bucket
        doc["staging_replication_errors"] += 1
        _failed(doc, "staging replication", exc)
    try:
        report = loader.run()
    except Exception as exc:
        doc["errors"] += 1
        _failed(doc, "load", exc)
    else:
        doc["cycles"] += 1
        doc["objects_loaded"] += report.loaded_objects
        doc["copies"] += report.copies
        doc["copy_files"] += report.copy_files
        doc["copy_bytes"] += report.copy_bytes
        doc["quarantined_objects"] += len(report.failed)
        doc["deferred"] += int(bool(report.deferred))
        doc.update(last=asdict(report), last_ok_at=time.time(), lag_s=report.oldest_pending_age_s)
    try:
        publisher.publish()
    except Exception as exc:  # readers keep the previous snapshot meanwhile
        doc["snapshot_errors"] += 1
        _failed(doc, "snapshot", exc)
    doc.update(updated_at=time.time(), last_cycle_at=time.time(), snapshot=publisher.figures())


def _failed(doc: dict[str, Any], step: str, exc: Exception) -> None:
    doc["failing"] = True
    doc["last_error"] = {"at": time.time(), "step": step, "error": f"{type(exc).__name__}: {exc}"}


def status_lines(state_dir: Path, now: float | None = None) -> list[str]:
    """``local status``'s lines for the loader and the report schedule, from their files (none before the first
    cycle)."""
    now = time.time() if now is None else now
    lines = []
    if doc := read_json(state_dir / files.LOADER):
        lines.append(
            f"  loader: {wording.count(doc['cycles'], 'cycle')}, last {_ago(now, doc.get('last_cycle_at', 0))} "
            f"({'FAILING' if doc.get('failing') else 'ok'}), last ok {_ago(now, doc.get('last_ok_at', 0))}; "
            f"{wording.count(doc['objects_loaded'], 'object')} loaded "
            f"(as {wording.count(doc.get('copy_files', 0), 'COPY file')}), "
            f"{wording.count(doc['quarantined_objects'], 'object')} quarantined, "
            f"{wording.count(doc['errors'], 'failed cycle')}; lag {doc.get('lag_s')} s "
            "(the oldest staged object not loaded yet)"
        )
        if error := doc.get("last_error"):
            lines.append(f"  loader: last error {_ago(now, error['at'])} in {error['step']}: {error['error']}")
        if snapshot := doc.get("snapshot"):
            lines.append(
                f"  warehouse for readers: {snapshot['path']} (read-only), published "
                f"{wording.count(snapshot['publishes'], 'time')}, "
                f"last {_ago(now, snapshot['published_at'])} ({snapshot['seconds']} s)"
            )
    if reports := read_json(state_dir / files.REPORTS):
        last = reports.get("last", {})
        lines.append(
            f"  reports: {wording.count(reports['runs'], 'run')}, last {_ago(now, reports['updated_at'])}: "
            + (
                f"error: {last['error']}"
                if "error" in last
                else f"{last.get('due')} due, {last.get('written')} written, {last.get('unchanged')} unchanged, "
                f"{last.get('failed')} failed"
            )
        )
    return lines


def _ago(now: float, then: float) -> str:
    return f"{max(0.0, now - then):.1f} s ago" if then else "never"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--report-interval", type=float, default=60.0)
    args = parser.parse_args()
    state = json.loads((args.state_dir / files.STATE).read_text())
    template = load_template()
    loader = build_loader(state, args.state_dir)
    publisher = SnapshotPublisher(
        DuckDBWarehouse(args.state_dir / files.WAREHOUSE, None), args.state_dir / files.WAREHOUSE_SNAPSHOT
    )
    replicators = build_staging_replicators(state, template)
    reports = build_report_runtime(state, args.state_dir, template)
    report_replicators = build_report_replicators(state, template)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Started again after it died, the worker counts on from its predecessor's totals.
    doc: dict[str, Any] = {**dict.fromkeys(_TOTALS, 0), "last": {}, **read_json(args.state_dir / files.LOADER)}
    report_totals = {"runs": 0, "written": 0, "unchanged": 0, "notified": 0, "failed": 0, "errors": 0}
    report_totals |= {k: v for k, v in read_json(args.state_dir / files.REPORTS).items() if k in report_totals}
    primary = next(iter(state["regions"]))
    last_report: dict[str, object] = {}
    next_report = time.monotonic()
    while True:
        down = down_regions(args.state_dir)
        if primary not in down:  # the schedule stops with its region
            load_cycle(loader, replicators, publisher, down, doc)
            write_json(args.state_dir / files.LOADER, doc)
        if primary not in down and time.monotonic() >= next_report:
            next_report = time.monotonic() + args.report_interval
            try:
                last_report = run_reports(reports, report_replicators, down)
            except Exception as exc:  # as the schedule's retry would, the next run tries again
                report_totals["errors"] += 1
                last_report = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                report_totals["runs"] += 1
                for key in ("written", "unchanged", "notified", "failed"):
                    report_totals[key] += int(last_report[key])  # type: ignore[call-overload]
            write_json(
                args.state_dir / files.REPORTS, {"updated_at": time.time(), **report_totals, "last": last_report}
            )
        if stop.wait(args.interval):
            break


if __name__ == "__main__":
    main()
