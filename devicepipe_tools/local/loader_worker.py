"""The local stack's scheduled loader: LoaderFunction's logic on DuckDB, every few seconds.

In AWS an EventBridge schedule invokes LoaderFunction, whose handler builds the loader on the Redshift Data
API. Locally the same ``Loader`` runs with the DuckDB warehouse (``.local/.../warehouse.duckdb``) instead, in
the primary region, over every region's staging bucket, as the primary stack's loader does.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

from devicepipe.loader import Loader, Source
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.local.outage import down_regions
from devicepipe_tools.local.resources import clients
from devicepipe_tools.local.stack import write_json


def build_loader(state: dict[str, object], state_dir: Path, max_objects: int = 500) -> Loader:
    """The loader of a local stack (its DuckDB file, every region's staging bucket)."""
    regions: dict[str, dict[str, dict[str, str]]] = state["regions"]  # type: ignore[assignment]
    primary = next(iter(regions))
    s3 = clients(str(state["endpoint"]), primary, "s3")["s3"]
    warehouse = DuckDBWarehouse(state_dir / "warehouse.duckdb", s3)
    sources = [Source(res["names"]["StagingBucket"], region) for region, res in regions.items()]
    return Loader(s3, warehouse, sources, regions[primary]["names"]["StagingBucket"], max_objects=max_objects)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    state = json.loads((args.state_dir / "state.json").read_text())
    loader = build_loader(state, args.state_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    totals = {"cycles": 0, "objects_loaded": 0, "copies": 0, "failed_manifests": 0, "deferred": 0, "errors": 0}
    out = args.state_dir / "loader.json"
    primary = next(iter(state["regions"]))
    last: dict[str, object] = {}
    while True:
        if primary not in down_regions(args.state_dir):  # the schedule stops with its region
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
