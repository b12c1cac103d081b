"""The local stack's schedules: LoaderFunction's and ReportFunction's logic on DuckDB, in the primary region.

In AWS EventBridge schedules invoke LoaderFunction and ReportFunction, whose handlers build on the Redshift Data
API. Locally the same ``Loader`` runs with the DuckDB warehouse (``.local/.../warehouse.duckdb``) instead, every
few seconds, in the primary region, over the primary region's staging bucket, as the primary stack's loader
does; the report run (``devicepipe.report_run``, as ReportFunction runs it) on the same warehouse, the local PostgreSQL
registry and moto's S3 and SNS, every ``--report-interval`` seconds. The other regions' staged readings reach
the primary's bucket, and its reports the other regions' report buckets, as in AWS through S3 replication, which
the worker stands in for (``staging_replication``: how it differs from S3's is said there).
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

from devicepipe.config import ReportSettings
from devicepipe.database import PgDatabase
from devicepipe.delivery import S3_CONFIG
from devicepipe.loader import Loader, Source
from devicepipe.registry import Registry, load_registry
from devicepipe.report_run import Request, Runtime, run
from devicepipe.retry import Deadline
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.outage import down_regions
from devicepipe_tools.local.resources import RegionResources, clients, function_env
from devicepipe_tools.local.stack import write_json
from devicepipe_tools.local.staging_replication import StagingReplicator, replication_prefixes
from devicepipe_tools.template import load_template


def build_loader(state: dict[str, object], state_dir: Path, max_objects: int = 500) -> Loader:
    """The loader of a local stack (its DuckDB file, the primary region's staging bucket)."""
    regions: dict[str, dict[str, dict[str, str]]] = state["regions"]  # type: ignore[assignment]
    primary = next(iter(regions))
    s3 = clients(str(state["endpoint"]), primary, "s3")["s3"]
    warehouse = DuckDBWarehouse(state_dir / "warehouse.duckdb", s3)
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
    warehouse = DuckDBWarehouse(state_dir / "warehouse.duckdb", s3)

    def registry() -> Registry:
        db = PgDatabase.from_url(state["registry_reader_url"])
        try:
            return load_registry(db)
        finally:
            db.close()

    return Runtime(settings, warehouse, s3, sns, Deadline.unlimited(), registry)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--report-interval", type=float, default=60.0)
    args = parser.parse_args()
    state = json.loads((args.state_dir / "state.json").read_text())
    template = load_template()
    loader = build_loader(state, args.state_dir)
    replicators = build_staging_replicators(state, template)
    reports = build_report_runtime(state, args.state_dir, template)
    report_replicators = build_report_replicators(state, template)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    totals = {
        "cycles": 0,
        "objects_loaded": 0,
        "copies": 0,
        "failed_manifests": 0,
        "deferred": 0,
        "errors": 0,
        "staging_replicated": 0,  # objects copied from the other regions' staging buckets
        "staging_replication_errors": 0,
    }
    report_totals = {"runs": 0, "written": 0, "unchanged": 0, "notified": 0, "failed": 0, "errors": 0}
    out = args.state_dir / "loader.json"
    primary = next(iter(state["regions"]))
    last: dict[str, object] = {}
    last_report: dict[str, object] = {}
    next_report = time.monotonic()
    while True:
        down = down_regions(args.state_dir)
        if primary not in down:  # the schedule stops with its region
            try:  # S3 replication's stand-in first, so that the cycle sees what replicated since the last one
                totals["staging_replicated"] += replicate_staging(replicators, down)
            except Exception as exc:  # retried on the next tick; the objects stay in their source bucket
                totals["staging_replication_errors"] += 1
                last = {**last, "staging_replication_error": f"{type(exc).__name__}: {exc}"}
            try:
                report = loader.run()
            except Exception as exc:  # a failed scheduled run is simply run again on the next tick, as in AWS
                totals["errors"] += 1
                last = {**last, "error": f"{type(exc).__name__}: {exc}"}
            else:
                totals["cycles"] += 1
                totals["objects_loaded"] += report.loaded_objects
                totals["copies"] += report.copies
                totals["failed_manifests"] += len(report.failed)
                totals["deferred"] += int(bool(report.deferred))
                last = asdict(report)
            write_json(out, {"updated_at": time.time(), **totals, "last": last})
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
                args.state_dir / "reports.json", {"updated_at": time.time(), **report_totals, "last": last_report}
            )
        if stop.wait(args.interval):
            break


if __name__ == "__main__":
    main()
