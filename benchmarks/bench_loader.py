"""Loader: COPY statements per load cycle, rows loaded per second, and what an empty cycle costs against history.

1. Staged objects are written by the real stager into moto S3 and loaded into the local DuckDB warehouse. The
   baseline is the object count: a loader that COPYs object by object would issue that many statements. Target:
   one COPY per manifest, whatever the object count.
2. An empty scheduled cycle (nothing new to load) with 1,000 / 10,000 / 100,000 objects of history, already
   loaded, in older hours (put straight into moto and the ledger: the stager and COPY have nothing to do with
   it). Before issue 16 every cycle listed every staged object and read the whole ledger (0.2 s at 1,000 objects,
   4.5 s at 20,000); now it lists each origin from its watermark hour and reads the ledger in those key ranges.
   The floor is the same empty cycle with no history, measured in the same run; the target is a cost within 2x of
   it at every size. The cost measured is the loader's own (its warehouse queries included), without the time
   spent inside moto's S3 calls: moto lists by scanning every key of the bucket on every call
   (``moto/s3/models.py``, ``list_objects``), where S3 reads a prefix from its index. The S3 keys each cycle is
   handed, which S3's cost follows, are counted apart, and the whole wall time is shown for information. The
   full sweep (what every cycle did before, and a backfill of ``readings/`` does now) is timed at each size too.
3. COPY input files per hour and their median size at the design load (1,000 readings/s on 4 stream shards, the
   template's stager batching and load interval), against the staged objects as they are (what the COPY read
   before issue 16's joining): real staged objects (the stager's, from ``bench_consumers``) in moto S3, joined by
   ``Loader.copy_files`` with the default sizing. Target: files of at least 1 MiB, a multiple of the slices. The
   CPU the joining costs per cycle is shown beside the load interval it must fit in.
"""

from __future__ import annotations

import gzip
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import duckdb
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from benchmarks import bench_consumers
from devicepipe.compaction import MIB, MIN_FILE_BYTES
from devicepipe.loader import Loader, Manifest, Source, StagedObject
from devicepipe.retry import Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe_tools.events import insert_batch
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse
from devicepipe_tools.template import load_template, resource

OBJECTS = 60
ROWS_PER_OBJECT = 500
MAX_OBJECTS_PER_MANIFEST = 500
HISTORY = (1_000, 10_000, 100_000)
HISTORY_PER_HOUR = 500  # objects an hour of history holds (100,000 objects: 200 hours)
REPEATS = 9  # empty cycles timed per size; the least is kept
FLAT_WITHIN = 2.0
SWEPT = 10_000  # the largest history the full sweep is timed at
NOW = 1_795_000_000.0  # the clock of the history runs
BUCKET = "staging"


def main() -> list[tuple[str, float, float, bool]]:
    return copies_per_cycle() + empty_cycle_against_history() + copy_files_per_hour()


def copy_files_per_hour() -> list[tuple[str, float, float, bool]]:
    template = load_template()
    batching = bench_consumers.esm_batch(
        resource(template, "StagerEventSourceMapping")["Properties"],
        bench_consumers.READINGS_PER_S / bench_consumers.SHARDS,
        bench_consumers.stream_record_bytes(),
    )
    interval_s = 60 * int(template["Parameters"]["LoadIntervalMinutes"]["Default"])
    per_cycle = round(batching.objects_per_hour(bench_consumers.SHARDS) * interval_s / 3600)
    stream = bench_consumers.shard_stream(bench_consumers.SAMPLE_OBJECTS * batching.records)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        stager = Stager(s3, BUCKET, "us-east-1", Retrier())
        samples = [
            stager.stage(changes(stream[first : first + batching.records]))
            for first in range(0, len(stream), batching.records)
        ]
        bodies = [s3.get_object(Bucket=BUCKET, Key=s.key)["Body"].read() for s in samples]
        source = Source(BUCKET, "us-east-1")
        objects = []
        for i in range(per_cycle):  # a cycle's objects: the samples over again, under keys of their own
            key = f"readings/origin=us-east-1/dt=2026-11-02/hour=09/{i:05d}.jsonl.gz"
            s3.put_object(Bucket=BUCKET, Key=key, Body=bodies[i % len(bodies)])
            objects.append(StagedObject(source, key, len(bodies[i % len(bodies)])))
        loader = Loader(s3, None, source, BUCKET)  # type: ignore[arg-type]
        started_cpu, started = time.process_time(), time.perf_counter()
        files = loader.copy_files(Manifest(source, tuple(objects)))
        cpu_s, wall_s = time.process_time() - started_cpu, time.perf_counter() - started
    cycles_per_hour = 3600 / interval_s
    before = statistics.median(o.size for o in objects)
    median = statistics.median(f.size for f in files)
    staged_mib = sum(o.size for o in objects) / MIB
    print(
        f"loader: COPY input at {bench_consumers.READINGS_PER_S:,} readings/s on {bench_consumers.SHARDS} shards, "
        f"a cycle every {interval_s // 60} min ({per_cycle} staged objects, {staged_mib:.1f} MiB a cycle)"
    )
    print(
        f"  before (the staged objects as they are): {per_cycle * cycles_per_hour:,.0f} files/hour, "
        f"median {before / 1024:,.1f} KiB"
    )
    print(
        f"  joined ({loader.sizing.slices} slices): {len(files) * cycles_per_hour:,.0f} files/hour, "
        f"{len(files)} a cycle, median {median / MIB:,.2f} MiB; joining took {cpu_s:.2f} s CPU "
        f"({cpu_s / staged_mib * 1000:.0f} ms per staged MiB), {wall_s:.2f} s wall, of a {interval_s} s interval"
    )
    return [
        (f"COPY files/hour (before {per_cycle * cycles_per_hour:,.0f})", len(files) * cycles_per_hour, 0.0, True),
        (
            f"COPY median file MiB (before {before / MIB:.2f})",
            median / MIB,
            1.0,
            median >= MIN_FILE_BYTES and len(files) % loader.sizing.slices == 0,
        ),
    ]


def copies_per_cycle() -> list[tuple[str, float, float, bool]]:
    with mock_aws(), tempfile.TemporaryDirectory() as tmp:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        stager = Stager(s3, BUCKET, "us-east-1", Retrier())
        for b in range(OBJECTS):
            stager.stage(list(changes(insert_batch(b, ROWS_PER_OBJECT, devices=300, branches=17))))
        warehouse = DuckDBWarehouse(Path(tmp) / "bench.duckdb", s3)
        loader = Loader(s3, warehouse, Source(BUCKET, "us-east-1"), BUCKET, max_objects=MAX_OBJECTS_PER_MANIFEST)
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


@dataclass
class Cost:
    wall_s: float
    own_s: float  # wall minus the time inside S3 calls
    keys_listed: int
    ledger_rows: int


class S3Timer:
    """Time spent inside, and keys returned by, the S3 calls of one client (botocore's call events)."""

    def __init__(self, s3: Any) -> None:
        self.inside_s = 0.0
        self.keys = 0
        self._started = 0.0
        s3.meta.events.register("before-call.s3.*", self._before)
        s3.meta.events.register("after-call.s3.*", self._after)

    def _before(self, **_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        self.inside_s += time.perf_counter() - self._started
        self.keys += len(parsed.get("Contents", []))


class CountingWarehouse:
    """The warehouse, counting the rows its queries return."""

    def __init__(self, inner: DuckDBWarehouse) -> None:
        self.inner = inner
        self.rows = 0

    def execute(self, statements: Any) -> None:
        self.inner.execute(statements)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.inner.query(sql)
        self.rows += len(rows)
        return rows


def measure(run: Callable[[], object], timer: S3Timer, warehouse: CountingWarehouse, repeats: int = REPEATS) -> Cost:
    """The least cost of ``repeats`` runs (on a shared machine, the others carry other processes' time)."""
    costs = []
    for _ in range(repeats):
        timer.inside_s, timer.keys, warehouse.rows = 0.0, 0, 0
        started = time.perf_counter()
        run()
        wall = time.perf_counter() - started
        costs.append(Cost(wall, wall - timer.inside_s, timer.keys, warehouse.rows))
    return Cost(
        min(c.wall_s for c in costs),
        min(c.own_s for c in costs),
        max(c.keys_listed for c in costs),
        max(c.ledger_rows for c in costs),
    )


def key_at(epoch_s: float, name: str) -> str:
    return time.strftime(f"readings/origin=us-east-1/dt=%Y-%m-%d/hour=%H/{name}.jsonl.gz", time.gmtime(epoch_s))


def add_history(path: Path, count: int, first: int) -> None:
    """``count`` loaded objects in the hours before the recent ones: in moto's bucket (through its backend: a
    hundred thousand PUTs through the API would take minutes) and in the warehouse's ledger."""
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    keys = [
        key_at(NOW - (4 + (first + i) // HISTORY_PER_HOUR) * 3600, f"history-{first + i:08d}") for i in range(count)
    ]
    for key in keys:
        backend.put_object(BUCKET, key, b"")
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO loaded_objects SELECT unnest(?), 'manifests/us-east-1/history.json'",
            [[f"s3://{BUCKET}/{k}" for k in keys]],
        )


def empty_cycle_against_history() -> list[tuple[str, float, float, bool]]:
    with mock_aws(), tempfile.TemporaryDirectory() as tmp:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        path = Path(tmp) / "history.duckdb"
        warehouse = CountingWarehouse(DuckDBWarehouse(path, s3))
        loader = Loader(s3, warehouse, Source(BUCKET, "us-east-1"), BUCKET, clock=lambda: NOW)
        # The live hours: a few objects in the current hour and the ones before it, loaded by a first cycle
        for hour in range(3):
            for i in range(2):
                line = f'{{"device_id":"d{i}","branch_id":"b","ts":"2026-11-18T1{hour}:00:00Z","seq":{i}}}\n'
                body = gzip.compress(line.encode())
                s3.put_object(Bucket=BUCKET, Key=key_at(NOW - hour * 3600, f"live-{i}"), Body=body)
        loader.run()
        timer = S3Timer(s3)
        floor = measure(loader.run, timer, warehouse)
        rows: list[tuple[int, Cost, Cost | None]] = []
        for size in HISTORY:
            add_history(path, size - (rows[-1][0] if rows else 0), rows[-1][0] if rows else 0)
            empty = measure(loader.run, timer, warehouse)
            # moto alone takes about a minute to list 100,000 keys in pages of 1,000: the sweep stops at 10,000
            sweep = measure(lambda: loader.pending("readings/"), timer, warehouse, 1) if size <= SWEPT else None
            rows.append((size, empty, sweep))
    print(f"loader: an empty scheduled cycle against history (least of {REPEATS}; own = without moto's S3 time)")
    print(
        f"  floor (no history): own {floor.own_s * 1000:6.1f} ms, wall {floor.wall_s * 1000:6.1f} ms, "
        f"{floor.keys_listed} S3 keys listed, {floor.ledger_rows} ledger rows read"
    )
    out = []
    for size, empty, sweep in rows:
        ratio = empty.own_s / floor.own_s
        print(
            f"  {size:>7,} history objects: own {empty.own_s * 1000:6.1f} ms = {ratio:4.2f}x floor, wall "
            f"{empty.wall_s * 1000:6.1f} ms, {empty.keys_listed} S3 keys listed, {empty.ledger_rows} ledger rows read"
        )
        if sweep:
            print(
                f"  {'':>7}  full sweep (every cycle before): own {sweep.own_s * 1000:7.1f} ms, wall "
                f"{sweep.wall_s * 1000:7.1f} ms, {sweep.keys_listed} S3 keys listed, {sweep.ledger_rows} ledger rows"
            )
        flat = ratio <= FLAT_WITHIN and empty.keys_listed == floor.keys_listed
        out.append((f"loader empty cycle, {size // 1000}k history / floor", ratio, FLAT_WITHIN, flat))
    return out
