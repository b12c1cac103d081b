"""What a scenario (the demo, chaos) checks of a local stack once its pipeline has drained.

Each ``verify_*`` reads one store through the same public interfaces a user has (the AWS APIs on moto, Redis,
the warehouse's loader) and appends a ``Check`` to a ``Result``: every good reading stored exactly once with LATEST
at each device's newest, nothing given up, the cache current, each reading staged once by the region that
ingested it, and loaded once into the warehouse, also after a forced reload.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devicepipe.cache import CacheWriter
from devicepipe.models import parse_reading
from devicepipe.warehouse import BRANCH_REPORT
from devicepipe_tools import wording
from devicepipe_tools.local import files, stack
from devicepipe_tools.local.loader_worker import build_loader
from devicepipe_tools.local.resources import RegionResources


@dataclass
class Check:
    """One thing checked of the stack's stores: a name, whether it held, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    """What a scenario checked (each with its detail) and the figures it measured."""

    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return all(c.ok for c in self.checks)


def wait_drained(state_dir: Path, records: dict[str, int], timeout_s: float) -> dict[str, Any]:
    """Until every record put was handled (done or given up) in its region and the stack has settled (mappings
    drained, replication idle), three polls in a row."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = stack.mapping_stats(state_dir)
        handled = {
            region: sum(
                s["records_done"] + s["sent_to_destination"] + s["records_filtered"]
                for name, s in stats.items()
                if name == f"{region}/IngestEventSourceMapping"
            )
            for region in records
        }
        done = all(handled[r] >= n for r, n in records.items()) and stack.settled(state_dir)
        quiet = quiet + 1 if done else 0
        if quiet >= 3:
            return stats
        time.sleep(0.5)
    raise stack.StackError(f"the pipeline did not drain within {timeout_s:.0f}s: {json.dumps(stats)[:2000]}")


def _scan(dynamodb: Any, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = dynamodb.get_paginator("scan").paginate(TableName=table).build_full_result()["Items"]
    return {(i["pk"]["S"], i["sk"]["S"]): i for i in items}


def verify_table(
    result: Result,
    region: str,
    clients: dict[str, Any],
    res: RegionResources,
    docs: list[dict[str, Any]],
    where: str,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every good reading stored once and LATEST at each device's newest, in one region's table."""
    expected = {(r.device_id, r.version) for r in map(parse_reading, docs)}
    newest = _newest(docs)
    items = _scan(clients["dynamodb"], res.names["ReadingsTable"])
    stored = [(i["device_id"]["S"], sk[2:]) for (_, sk), i in items.items() if sk.startswith("R#")]
    latest = {i["device_id"]["S"]: i["latest_at"]["S"] for (_, sk), i in items.items() if sk == "LATEST"}
    missing = set(expected) - set(stored)
    extra = set(stored) - set(expected)
    result.figures.setdefault("readings_stored", len(stored))
    result.figures.setdefault("readings_expected", len(expected))
    result.figures.setdefault("latest_items", len(latest))
    result.checks.append(
        Check(
            f"table{where}: every good reading stored exactly once",
            not missing and not extra and len(stored) == len(set(stored)),
            f"{len(stored)} stored, {len(expected)} expected, {len(missing)} missing, {len(extra)} unexpected",
        )
    )
    wrong_latest = [d for d, v in newest.items() if latest.get(d) != v]
    result.checks.append(
        Check(
            f"table{where}: LATEST holds each device's newest reading",
            not wrong_latest and len(latest) == len(newest),
            f"{len(latest)} LATEST items for {len(newest)} devices, {len(wrong_latest)} not the newest",
        )
    )
    return items


def verify_regions_agree(result: Result, tables: dict[str, dict[tuple[str, str], dict[str, Any]]]) -> None:
    """Global-table convergence: every replica holds the same items with the same attributes."""
    (first, reference), *others = tables.items()
    differing = {
        region: sum(1 for key in set(reference) | set(items) if reference.get(key) != items.get(key))
        for region, items in others
    }
    origins = Counter(i["origin_region"]["S"] for (_, sk), i in reference.items() if sk.startswith("R#"))
    result.figures["reading_origins"] = dict(origins)
    result.checks.append(
        Check(
            "tables: every region's replica holds the same items",
            not any(differing.values()),
            f"{len(reference)} items in {first}; "
            + ", ".join(f"{n} differ in {region}" for region, n in differing.items()),
        )
    )


def verify_failure_queue(result: Result, clients: dict[str, Any], res: RegionResources, where: str) -> None:
    queue_url = res.names["IngestFailureQueue"]
    attrs = clients["sqs"].get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    dlq = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    result.checks.append(Check(f"ingest on-failure queue empty{where}", dlq == 0, f"{dlq} batches given up"))


def _newest(docs: list[dict[str, Any]]) -> dict[str, str]:
    newest: dict[str, str] = {}
    for doc in docs:
        r = parse_reading(doc)
        newest[r.device_id] = max(newest.get(r.device_id, ""), r.version)
    return newest


def verify_cache(result: Result, redis_url: str, docs: list[dict[str, Any]], where: str) -> None:
    """Redis holds every device's newest reading, and every device sits in its branch's last-seen set."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    newest = _newest(docs)
    writer = CacheWriter(client)
    cached = {d: client.hget(writer.device_key(d), "version") for d in newest}
    wrong = [d for d, v in newest.items() if cached[d] != v]
    branches = {doc["device_id"]: doc["branch_id"] for doc in docs}
    outside = [d for d in newest if client.zscore(writer.branch_key(branches[d]), d) is None]
    result.figures.setdefault("cached_devices", sum(1 for v in cached.values() if v))
    result.checks.append(
        Check(
            f"cache{where}: newest reading of every device, in its branch view",
            not wrong and not outside,
            f"{len(newest) - len(wrong)} of {len(newest)} devices current, {len(outside)} missing from branch views",
        )
    )


def verify_staging(
    result: Result,
    regions: dict[str, tuple[Any, RegionResources]],
    sent_to: dict[str, list[dict[str, Any]]],
) -> None:
    """Each region staged exactly the readings it ingested itself, each once (replicated ones it leaves to
    their own region)."""
    objects, rows, problems = 0, 0, []
    for region, (s3, res) in regions.items():
        bucket = res.names["StagingBucket"]
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"readings/origin={region}/")
            for o in page.get("Contents", [])
        ]
        counts: Counter[tuple[str, str, int]] = Counter()
        for key in keys:
            body = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            counts.update((r["device_id"], r["ts"], r["seq"]) for r in map(json.loads, body.splitlines()))
        expected = {(r.device_id, r.ts, r.seq) for r in map(parse_reading, sent_to[region])}
        twice = [k for k, n in counts.items() if n > 1]
        missing, extra = expected - set(counts), set(counts) - expected
        objects, rows = objects + len(keys), rows + sum(counts.values())
        if twice or missing or extra:
            problems.append(f"{region}: {len(missing)} missing, {len(twice)} twice, {len(extra)} not its own")
    result.figures.update(staged_objects=objects, staged_rows=rows)
    result.checks.append(
        Check(
            "staging: every reading staged once, by the region that ingested it",
            not problems,
            f"{rows} rows in {wording.count(objects, 'object')}" + (f"; {'; '.join(problems)}" if problems else ""),
        )
    )


def verify_warehouse(
    result: Result, state: dict[str, Any], state_dir: Path, docs: list[dict[str, Any]], timeout_s: float
) -> None:
    """Every good reading in the warehouse exactly once, also after a forced retry of a load."""
    staged = result.figures.get("staged_objects", 0)
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        path = state_dir / files.LOADER
        stats = json.loads(path.read_text()) if path.exists() else {}
        if (
            stats.get("objects_loaded", 0) + stats.get("quarantined_objects", 0) >= staged
            and stats["last"].get("pending_objects") == 0
        ):
            break
        time.sleep(0.5)
    loader = build_loader(state, state_dir)
    expected = {(r.device_id, r.ts, r.seq) for r in map(parse_reading, docs)}

    def rows() -> list[tuple[str, str, int]]:
        got = loader.warehouse.query("SELECT device_id, ts, seq FROM readings")
        return [(d, ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), seq) for d, ts, seq in got]

    before = rows()
    # Force a retry: load the first manifest again, as a retried or concurrent run would.
    manifests = loader.plan(loader.staged())
    if manifests:
        loader.load(manifests[0])
    after = rows()
    result.figures.update(
        warehouse_rows=len(after),
        load_cycles=stats.get("cycles"),
        copy_statements=stats.get("copies"),
        warehouse_quarantined_objects=stats.get("quarantined_objects"),
        # the other regions' staged objects copied into the primary's bucket (S3 replication's stand-in)
        staging_replicated=stats.get("staging_replicated"),
        branch_report=[(b, n, d, str(last)) for b, n, d, last in loader.warehouse.query(BRANCH_REPORT)],
    )
    result.checks.append(
        Check(
            "warehouse: every good reading exactly once, also after a forced reload",
            sorted(before) == sorted(after) and set(after) == expected and len(after) == len(expected),
            f"{len(after)} rows ({len(before)} before the reload), {len(expected)} expected, "
            f"{len(expected - set(after))} missing, {len(after) - len(set(after))} duplicated",
        )
    )
