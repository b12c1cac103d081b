"""Loader: COPY statements per load cycle against the number of staged objects, and rows loaded per second.

Staged objects are written by the real stager into moto S3 and loaded into the local DuckDB warehouse. The
baseline is the object count: a loader that COPYs object by object would issue that many statements.
Target: one COPY per manifest, whatever the object count.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import boto3
from moto import mock_aws

from devicepipe.loader import Loader, Source
from devicepipe.retry import Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe_tools.events import insert_batch
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse

OBJECTS = 60
ROWS_PER_OBJECT = 500
MAX_OBJECTS_PER_MANIFEST = 500


def main() -> list[tuple[str, float, float, bool]]:
    with mock_aws(), tempfile.TemporaryDirectory() as tmp:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="staging")
        stager = Stager(s3, "staging", "us-east-1", Retrier())
        for b in range(OBJECTS):
            stager.stage(list(changes(insert_batch(b, ROWS_PER_OBJECT, devices=300, branches=17))))
        warehouse = DuckDBWarehouse(Path(tmp) / "bench.duckdb", s3)
        loader = Loader(s3, warehouse, Source("staging", "us-east-1"), "staging", max_objects=MAX_OBJECTS_PER_MANIFEST)
        loader.ensure_schema()
        started = time.perf_counter()
        report = loader.run()
        elapsed = time.perf_counter() - started
        rows = warehouse.query("SELECT COUNT(*) FROM readings")[0][0]
    print(f"loader: {OBJECTS} staged objects of {ROWS_PER_OBJECT} rows (moto S3 -> DuckDB)")
    print(
        f"  COPY statements per cycle {report.copies} for {report.pending_objects} objects in {report.manifests} "
        f"manifest(s) (object-by-object baseline: {report.pending_objects})"
    )
    print(f"  {rows} rows loaded in {elapsed:.2f}s: {rows / elapsed:,.0f} rows/s locally")
    return [
        (
            "loader COPYs per cycle vs manifests",
            report.copies / max(1, report.manifests),
            1.0,
            report.copies == report.manifests == 1,
        ),
        ("loader rows/s locally (info)", rows / elapsed, 0.0, True),
    ]
