"""`devicepipe local demo`: the whole pipeline end to end on the local stack, checked.

Starts a stack of its own (state in ``.local/demo``), simulates devices across branches, produces the readings
plus a few poison pills through the real producer, waits until every event source mapping has drained, then
compares what each stage holds with what was produced and prints a verdict. Exit status 0 only if consistent.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devicepipe.cache import CacheWriter
from devicepipe.models import parse_reading
from devicepipe.warehouse import BRANCH_REPORT
from devicepipe_tools.local import stack
from devicepipe_tools.local.loader_worker import build_loader
from devicepipe_tools.local.resources import RegionResources
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.producer import Entry, FailureFile, Producer, entries_from_readings, simulate

DEMO_DIR = stack.STATE_DIR / "demo"

#: Records no device should send; each must end in the quarantine with its reason.
POISON_PILLS: list[tuple[str, bytes]] = [
    ("bad-json", b'{"device_id": "dev-00001", "branch_id": "branch-001", '),
    ("not-object", b'["dev-00001", 21.5]'),
    ("no-ts", b'{"device_id": "dev-00002", "branch_id": "branch-002", "metrics": {"t": 1}}'),
    ("bad-device", b'{"device_id": "dev 3", "branch_id": "b", "ts": 1793610000000, "metrics": {}}'),
    ("bad-ts", b'{"device_id": "dev-00004", "branch_id": "b", "ts": "yesterday", "metrics": {}}'),
    ("metrics-array", b'{"device_id": "dev-00005", "branch_id": "b", "ts": 1793610000000, "metrics": [1]}'),
    ("nan", b'{"device_id": "dev-00006", "branch_id": "b", "ts": 1793610000000, "metrics": {"t": NaN}}'),
    ("binary", b"\x00\xff\xfe binary garbage"),
    ("reserved", b'{"device_id": "d7", "branch_id": "b", "ts": 1793610000000, "metrics": {}, "pk": "x"}'),
    (
        "oversize",
        b'{"device_id": "d8", "branch_id": "b", "ts": 1793610000000, "metrics": {"blob": "' + b"x" * 70_000 + b'"}}',
    ),
]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return all(c.ok for c in self.checks)


def run_demo(
    readings: int = 10_000,
    devices: int = 200,
    branches: int = 12,
    regions: tuple[str, ...] = ("us-east-1",),
    replication_delay_s: float = stack.DEFAULT_REPLICATION_DELAY_S,
    keep: bool = False,
    timeout_s: float = 600,
    state_dir: Path = DEMO_DIR,
    say: Any = print,
) -> DemoResult:
    """Run the demo; ``say`` receives the progress lines."""
    stack.down(state_dir)
    t0 = time.monotonic()
    say(f"starting the local stack ({', '.join(regions)}) ...")
    state = stack.up(regions, state_dir, replication_delay_s=replication_delay_s)
    result = DemoResult()
    try:
        region = regions[0]
        res = stack.region_resources(state, region)
        clients = local_clients(state["endpoint"], region, "kinesis", "dynamodb", "s3", "sqs")
        result.figures["stack_start_s"] = round(time.monotonic() - t0, 1)

        docs = list(simulate(devices, branches, count=readings, seed=7))
        entries = list(entries_from_readings(docs))
        rng = random.Random(7)
        for name, payload in POISON_PILLS:
            entries.insert(rng.randrange(len(entries)), Entry(payload, f"poison-{name}", [f"poison {name}"]))
        say(
            f"producing {len(docs)} readings from {devices} devices in {branches} branches, "
            f"plus {len(POISON_PILLS)} poison pills ..."
        )
        failures = FailureFile(str(state_dir / "produce-failed.jsonl"))
        producer = Producer(clients["kinesis"], res.names["ReadingsStream"], failures, max_in_flight=8)
        producer.check_stream()
        t_produce = time.monotonic()
        progress = producer.send(entries)
        failures.close()
        produce_s = time.monotonic() - t_produce
        result.figures.update(
            produced=progress.sent,
            produce_failed=progress.failed,
            produce_s=round(produce_s, 2),
            produce_rate=round(progress.sent / produce_s),
            put_records_calls=progress.calls,
        )
        say(
            f"  {progress.sent} records put in {produce_s:.1f}s ({progress.sent / produce_s:.0f}/s), "
            f"{progress.failed} failed"
        )

        say("waiting for the pipeline to drain ...")
        t_drain = time.monotonic()
        stats = _wait_drained(state_dir, progress.sent, timeout_s)
        result.figures["drain_s"] = round(time.monotonic() - t_drain, 1)
        ingest = stats.get(f"{region}/IngestEventSourceMapping", {})
        result.figures["ingest"] = {
            k: ingest.get(k)
            for k in ("invocations", "records_done", "partial_failures", "function_errors", "sent_to_destination")
        }
        result.figures["latency_ms"] = ingest.get("latency_ms", {})

        _verify(result, clients, res, docs, progress.failed)
        _verify_cache(result, state["redis_url"], docs)
        _verify_staging(result, clients["s3"], res, docs)
        say("waiting for the warehouse loader ...")
        _verify_warehouse(result, state, state_dir, docs, timeout_s)
        for consumer in ("CacheUpdaterEventSourceMapping", "StagerEventSourceMapping"):
            s = stats.get(f"{region}/{consumer}", {})
            result.figures[consumer] = {
                k: s.get(k)
                for k in ("invocations", "records_done", "function_errors", "partial_failures", "sent_to_destination")
            }
        result.figures["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        if keep:
            say(f"stack left running; stop it with `devicepipe local down --state-dir {state_dir}`")
        else:
            stack.down(state_dir)
    return result


def _wait_drained(state_dir: Path, records: int, timeout_s: float) -> dict[str, Any]:
    """Until every record put was handled (done or given up) and every mapping has polled empty twice."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = stack.mapping_stats(state_dir)
        handled = sum(
            s["records_done"] + s["sent_to_destination"] + s["records_filtered"]
            for name, s in stats.items()
            if name.endswith("/IngestEventSourceMapping")
        )
        drained = all(s["drained"] for s in stats.values())
        quiet = quiet + 1 if handled >= records and drained else 0
        if quiet >= 2:
            return stats
        time.sleep(0.5)
    raise stack.StackError(f"the pipeline did not drain within {timeout_s:.0f}s: {json.dumps(stats)[:2000]}")


def _verify(
    result: DemoResult, clients: dict[str, Any], res: RegionResources, docs: list[dict[str, Any]], produce_failed: int
) -> None:
    expected = {(r.device_id, r.version) for r in map(parse_reading, docs)}
    newest = _newest(docs)
    table = res.names["ReadingsTable"]
    items = clients["dynamodb"].get_paginator("scan").paginate(TableName=table).build_full_result()["Items"]
    stored = [(i["device_id"]["S"], i["sk"]["S"][2:]) for i in items if i["sk"]["S"].startswith("R#")]
    latest = {i["device_id"]["S"]: i["latest_at"]["S"] for i in items if i["sk"]["S"] == "LATEST"}
    missing = set(expected) - set(stored)
    extra = set(stored) - set(expected)
    result.figures.update(readings_expected=len(expected), readings_stored=len(stored), latest_items=len(latest))
    result.checks.append(Check("producer", produce_failed == 0, f"{produce_failed} records failed to send"))
    result.checks.append(
        Check(
            "table: every good reading stored exactly once",
            not missing and not extra and len(stored) == len(set(stored)),
            f"{len(stored)} stored, {len(expected)} expected, {len(missing)} missing, {len(extra)} unexpected",
        )
    )
    wrong_latest = [d for d, v in newest.items() if latest.get(d) != v]
    result.checks.append(
        Check(
            "table: LATEST holds each device's newest reading",
            not wrong_latest and len(latest) == len(newest),
            f"{len(latest)} LATEST items for {len(newest)} devices, {len(wrong_latest)} not the newest",
        )
    )
    bucket = res.names["QuarantineBucket"]
    keys = [
        o["Key"]
        for page in clients["s3"].get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    quarantined = [json.loads(clients["s3"].get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys]
    by_payload = {base64.b64decode(q["payload_base64"]): q["reason"] for q in quarantined}
    unmatched = [name for name, payload in POISON_PILLS if payload not in by_payload]
    result.figures["quarantined"] = len(quarantined)
    result.figures["quarantine_reasons"] = {name: by_payload.get(payload, "MISSING") for name, payload in POISON_PILLS}
    result.checks.append(
        Check(
            "quarantine: every bad record kept with its reason",
            not unmatched and len(quarantined) == len(POISON_PILLS) and all(by_payload.values()),
            f"{len(quarantined)} quarantined of {len(POISON_PILLS)} bad; missing {unmatched or 'none'}",
        )
    )
    queue_url = res.names["IngestFailureQueue"]
    attrs = clients["sqs"].get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    dlq = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    result.checks.append(Check("ingest on-failure queue empty", dlq == 0, f"{dlq} batches given up"))


def _newest(docs: list[dict[str, Any]]) -> dict[str, str]:
    newest: dict[str, str] = {}
    for doc in docs:
        r = parse_reading(doc)
        newest[r.device_id] = max(newest.get(r.device_id, ""), r.version)
    return newest


def _verify_cache(result: DemoResult, redis_url: str, docs: list[dict[str, Any]]) -> None:
    """Redis holds every device's newest reading, and every device sits in its branch's last-seen set."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    newest = _newest(docs)
    writer = CacheWriter(client)
    cached = {d: client.hget(writer.device_key(d), "version") for d in newest}
    wrong = [d for d, v in newest.items() if cached[d] != v]
    branches = {doc["device_id"]: doc["branch_id"] for doc in docs}
    outside = [d for d in newest if client.zscore(writer.branch_key(branches[d]), d) is None]
    result.figures["cached_devices"] = sum(1 for v in cached.values() if v)
    result.checks.append(
        Check(
            "cache: newest reading of every device, in its branch view",
            not wrong and not outside,
            f"{len(newest) - len(wrong)} of {len(newest)} devices current, {len(outside)} missing from branch views",
        )
    )


def _verify_staging(result: DemoResult, s3: Any, res: RegionResources, docs: list[dict[str, Any]]) -> None:
    """The staged objects hold every reading of this region exactly once."""
    bucket = res.names["StagingBucket"]
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"readings/origin={res.region}/")
        for o in page.get("Contents", [])
    ]
    counts: Counter[tuple[str, str, int]] = Counter()
    for key in keys:
        body = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        counts.update((r["device_id"], r["ts"], r["seq"]) for r in map(json.loads, body.splitlines()))
    expected = {(r.device_id, r.ts, r.seq) for r in map(parse_reading, docs)}
    twice = [k for k, n in counts.items() if n > 1]
    missing = expected - set(counts)
    extra = set(counts) - expected
    result.figures.update(staged_objects=len(keys), staged_rows=sum(counts.values()))
    result.checks.append(
        Check(
            "staging: every own-region reading staged exactly once",
            not twice and not missing and not extra,
            f"{sum(counts.values())} rows in {len(keys)} objects, {len(missing)} missing, {len(twice)} twice, "
            f"{len(extra)} unexpected",
        )
    )


def _counters(c: dict[str, Any]) -> str:
    return (
        f"{c.get('invocations')} invocations, {c.get('records_done')} records, {c.get('function_errors')} "
        f"errors, {c.get('partial_failures')} partial failures, {c.get('sent_to_destination')} given up"
    )


def _verify_warehouse(
    result: DemoResult, state: dict[str, Any], state_dir: Path, docs: list[dict[str, Any]], timeout_s: float
) -> None:
    """Every good reading in the warehouse exactly once, also after a forced retry of a load."""
    staged = result.figures.get("staged_objects", 0)
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        path = state_dir / "loader.json"
        stats = json.loads(path.read_text()) if path.exists() else {}
        if (
            stats.get("objects_loaded", 0) + stats.get("failed_manifests", 0) >= staged
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
        warehouse_failed_manifests=stats.get("failed_manifests"),
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


def render(result: DemoResult) -> str:
    f = result.figures
    lat = f.get("latency_ms", {})
    lines = [
        "",
        "stage            count   detail",
        f"produced        {f.get('produced', 0):6d}   {f.get('produce_rate', 0)} records/s, "
        f"{f.get('put_records_calls', 0)} PutRecords calls, {f.get('produce_failed', 0)} failed",
        f"stored          {f.get('readings_stored', 0):6d}   of {f.get('readings_expected', 0)} good readings; "
        f"{f.get('latest_items', 0)} LATEST items",
        f"quarantined     {f.get('quarantined', 0):6d}   "
        + ", ".join(f"{k}: {v[:48]}" for k, v in list(f.get("quarantine_reasons", {}).items())[:3])
        + ", ...",
        f"cached          {f.get('cached_devices', 0):6d}   devices with their newest reading in Redis",
        f"staged          {f.get('staged_rows', 0):6d}   rows in {f.get('staged_objects', 0)} gzip objects",
        f"warehouse       {f.get('warehouse_rows', 0):6d}   rows; {f.get('copy_statements')} COPY statements in "
        f"{f.get('load_cycles')} load cycles",
        *(
            f"{name:24s}{_counters(f.get(key, {}))}"
            for name, key in (
                ("ingest", "ingest"),
                ("cache updater", "CacheUpdaterEventSourceMapping"),
                ("stager", "StagerEventSourceMapping"),
            )
        ),
        f"latency (stream -> stored)  p50 {lat.get('p50')} ms   p99 {lat.get('p99')} ms   max {lat.get('max')} ms",
        f"wall time       stack start {f.get('stack_start_s')}s, produce {f.get('produce_s')}s, "
        f"drain {f.get('drain_s')}s, total {f.get('total_s')}s",
        "",
    ]
    if f.get("branch_report"):
        lines += ["per-branch report (warehouse):", "  branch          readings  devices  last seen"]
        lines += [f"  {b:14s} {n:9d} {d:8d}  {last}" for b, n, d, last in f["branch_report"]]
        lines.append("")
    lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in result.checks]
    lines.append(f"\nverdict: {'CONSISTENT' if result.consistent else 'INCONSISTENT'}")
    return "\n".join(lines)
