"""The local stack's scheduled loader: LoaderFunction's logic on DuckDB, every few seconds.

In AWS an EventBridge schedule invokes LoaderFunction, whose handler builds the loader on the Redshift Data
API. Locally the same ``Loader`` runs with the DuckDB warehouse (``.local/.../warehouse.duckdb``) instead, in
the primary region, over the primary region's staging bucket, as the primary stack's loader does. The other
regions' staged readings reach that bucket as in AWS through S3 replication, which the worker stands in for
before each cycle (``staging_replication``: how it differs from S3's is said there).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devicepipe.loader import Loader, Source
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.outage import down_regions
from devicepipe_tools.local.resources import clients
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    state = json.loads((args.state_dir / "state.json").read_text())
    loader = build_loader(state, args.state_dir)
    replicators = build_staging_replicators(state, load_template())
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
    out = args.state_dir / "loader.json"
    primary = next(iter(state["regions"]))
    last: dict[str, object] = {}
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
        if stop.wait(args.interval):
            break


if __name__ == "__main__":
    main()
