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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devicepipe.cache import CacheWriter
from devicepipe.database import PgDatabase
from devicepipe.models import parse_reading
from devicepipe.registry import import_registry
from devicepipe.repair import regressions
from devicepipe.warehouse import BRANCH_REPORT
from devicepipe_tools.fleet import fleet_registry
from devicepipe_tools.local import files, stack, stage_latency
from devicepipe_tools.local.demo_reads import (
    FRESHNESS_GOAL_S,
    HIT_RATIO_GOAL,
    Expected,
    check_reads,
    freshness,
    hit_ratio,
)
from devicepipe_tools.local.demo_reports import verify_reports
from devicepipe_tools.local.esm import DynamoDBStreamSource, read_all
from devicepipe_tools.local.loader_worker import build_loader
from devicepipe_tools.local.resources import RegionResources
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.producer import Entry, FailureFile, Producer, entries_from_readings, simulate
from devicepipe_tools.read_client import ReadClient

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
    replication_delay_s: float = stack.DEMO_REPLICATION_DELAY_S,
    in_every_region: float = 0.05,
    keep: bool = False,
    timeout_s: float = 600,
    state_dir: Path = DEMO_DIR,
    say: Any = print,
) -> DemoResult:
    """Run the demo; ``say`` receives the progress lines.

    With several regions, each reading goes to one region picked at random (so every device is written in
    every region: LATEST conflicts), and a share ``in_every_region`` of them to all regions at once (the same
    reading ingested twice, as after a producer failover whose first answer was lost). The poison pills go
    to the first region.
    """
    stack.down(state_dir)
    t0 = time.monotonic()
    say(f"starting the local stack ({', '.join(regions)}) ...")
    state = stack.up(regions, state_dir, replication_delay_s=replication_delay_s)
    result = DemoResult()
    try:
        clients = {r: local_clients(state["endpoint"], r, "kinesis", "dynamodb", "s3", "sqs") for r in regions}
        registry = fleet_registry(devices, branches)
        seed = PgDatabase.from_url(state["registry_url"])
        try:
            import_registry(seed, registry)
        finally:
            seed.close()
        resources = {r: stack.region_resources(state, r) for r in regions}
        result.figures["stack_start_s"] = round(time.monotonic() - t0, 1)

        docs = list(simulate(devices, branches, count=readings, seed=7))
        sent_to = split_across_regions(docs, regions, in_every_region if len(regions) > 1 else 0.0)
        entries = {r: list(entries_from_readings(sent_to[r])) for r in regions}
        rng = random.Random(7)
        for name, payload in POISON_PILLS:
            into = entries[regions[0]]
            into.insert(rng.randrange(len(into) + 1), Entry(payload, f"poison-{name}", [f"poison {name}"]))
        say(
            f"producing {len(docs)} readings from {devices} devices in {branches} branches, plus "
            f"{len(POISON_PILLS)} poison pills"
            + (
                f", across {', '.join(f'{r} ({len(sent_to[r])})' for r in regions)}"
                f", {sent_to_every_region(sent_to, regions)} of them to every region"
                if len(regions) > 1
                else ""
            )
            + " ..."
        )
        progress = _produce(clients, resources, entries, state_dir)
        result.figures.update(progress)
        say(
            f"  {progress['produced']} records put in {progress['produce_s']:.1f}s ({progress['produce_rate']}/s), "
            f"{progress['produce_failed']} failed"
        )

        say("waiting for the pipeline to drain" + (" and replication to settle" if len(regions) > 1 else "") + " ...")
        t_drain = time.monotonic()
        stats = _wait_drained(state_dir, {r: len(e) for r, e in entries.items()}, timeout_s)
        result.figures["drain_s"] = round(time.monotonic() - t_drain, 1)
        first = regions[0]
        ingest = stats.get(f"{first}/IngestEventSourceMapping", {})
        result.figures["ingest"] = _mapping_figures(stats, "IngestEventSourceMapping")
        result.figures["latency_ms"] = ingest.get("latency_ms", {})
        if len(regions) > 1:
            result.figures["replication"] = stack.replication_stats(state_dir)
            result.figures["latest_regressions"] = {
                r: _latest_regressions(
                    DynamoDBStreamSource(
                        local_clients(state["endpoint"], r, "dynamodbstreams")["dynamodbstreams"],
                        resources[r].stream_arns["ReadingsTable"],
                        r,
                    )
                )
                for r in regions
            }

        result.checks.append(
            Check("producer", progress["produce_failed"] == 0, f"{progress['produce_failed']} records failed to send")
        )
        tables = {r: _verify_table(result, r, clients[r], resources[r], docs, label(r, regions)) for r in regions}
        if len(regions) > 1:
            _verify_regions_agree(result, tables)
        _verify_quarantine(result, clients[first], resources[first])
        for r in regions:
            _verify_failure_queue(result, clients[r], resources[r], label(r, regions))
            _verify_cache(result, state["redis_urls"][r], docs, label(r, regions))
        _verify_staging(result, {r: (clients[r]["s3"], resources[r]) for r in regions}, sent_to)
        say("waiting for the warehouse loader ...")
        _verify_warehouse(result, state, state_dir, docs, timeout_s)
        say("running the branch reports and reading them back through each region's API ...")
        checks, figures = verify_reports(state, state_dir, docs, registry)
        result.checks += [Check(*check) for check in checks]
        result.figures.update(figures)
        for consumer in ("CacheUpdaterEventSourceMapping", "StagerEventSourceMapping"):
            result.figures[consumer] = _mapping_figures(stats, consumer)
        say("reading it back through each region's API ...")
        _verify_api(result, state, regions, docs, clients, resources)
        say("timing one reading from PutRecord to each store ...")
        result.figures["stage_latency_s"] = stage_latency.measure(state, state_dir)["seconds"]
        result.figures["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        if keep:
            say(f"stack left running; stop it with `devicepipe local down --state-dir {state_dir}`")
        else:
            stack.down(state_dir)
    return result


def label(region: str, regions: tuple[str, ...]) -> str:
    """Check names carry the region only when there is more than one."""
    return f" [{region}]" if len(regions) > 1 else ""


def split_across_regions(
    docs: list[dict[str, Any]], regions: tuple[str, ...], in_every_region: float, seed: int = 11
) -> dict[str, list[dict[str, Any]]]:
    """Each reading to one region at random, or with probability ``in_every_region`` to all of them."""
    rng = random.Random(seed)
    sent_to: dict[str, list[dict[str, Any]]] = {r: [] for r in regions}
    for doc in docs:
        targets = regions if rng.random() < in_every_region else (regions[rng.randrange(len(regions))],)
        for r in targets:
            sent_to[r].append(doc)
    return sent_to


def sent_to_every_region(sent_to: dict[str, list[dict[str, Any]]], regions: tuple[str, ...]) -> int:
    keys = [{(d["device_id"], d["ts"], d.get("seq")) for d in sent_to[r]} for r in regions]
    return len(set.intersection(*keys))


def _produce(
    clients: dict[str, dict[str, Any]],
    resources: dict[str, RegionResources],
    entries: dict[str, list[Entry]],
    state_dir: Path,
) -> dict[str, Any]:
    """Every region's entries through the real producer, all regions at once."""
    failures = FailureFile(str(state_dir / "produce-failed.jsonl"))
    producers = {
        r: Producer(clients[r]["kinesis"], resources[r].names["ReadingsStream"], failures, max_in_flight=8)
        for r in entries
    }
    for producer in producers.values():
        producer.check_stream()
    t_produce = time.monotonic()
    with ThreadPoolExecutor(len(producers)) as pool:
        done = dict(zip(producers, pool.map(lambda r: producers[r].send(entries[r]), producers), strict=True))
    failures.close()
    produce_s = time.monotonic() - t_produce
    sent = sum(p.sent for p in done.values())
    return {
        "produced": sent,
        "produced_by_region": {r: p.sent for r, p in done.items()},
        "produce_failed": sum(p.failed for p in done.values()),
        "produce_s": round(produce_s, 2),
        "produce_rate": round(sent / produce_s),
        "put_records_calls": sum(p.calls for p in done.values()),
    }


def _latest_regressions(source: DynamoDBStreamSource) -> int:
    """How often last writer wins moved a LATEST item back in this region (each one repaired since)."""
    return sum(1 for record in read_all(source) if regressions([record.event]))


def _mapping_figures(stats: dict[str, Any], mapping: str) -> dict[str, Any]:
    """A mapping's counters summed over the regions."""
    keys = ("invocations", "records_done", "partial_failures", "function_errors", "sent_to_destination")
    per_region = [s for name, s in stats.items() if name.endswith(f"/{mapping}")]
    return {k: sum(s.get(k) or 0 for s in per_region) for k in keys}


def _wait_drained(state_dir: Path, records: dict[str, int], timeout_s: float) -> dict[str, Any]:
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


def _verify_table(
    result: DemoResult,
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


def _verify_regions_agree(result: DemoResult, tables: dict[str, dict[tuple[str, str], dict[str, Any]]]) -> None:
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


def _verify_quarantine(result: DemoResult, clients: dict[str, Any], res: RegionResources) -> None:
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


def _verify_failure_queue(result: DemoResult, clients: dict[str, Any], res: RegionResources, where: str) -> None:
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


def _verify_cache(result: DemoResult, redis_url: str, docs: list[dict[str, Any]], where: str) -> None:
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


def _verify_staging(
    result: DemoResult,
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
            f"{rows} rows in {objects} objects" + (f"; {'; '.join(problems)}" if problems else ""),
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


def _verify_api(
    result: DemoResult,
    state: dict[str, Any],
    regions: tuple[str, ...],
    docs: list[dict[str, Any]],
    clients: dict[str, dict[str, Any]],
    resources: dict[str, RegionResources],
) -> None:
    """Each region's API answers what was produced; then its freshness and cache hit ratio (after the checks:
    the freshness probe writes new readings)."""
    expected = Expected.of(docs)
    apis = {r: ReadClient(state["api_urls"][r]) for r in regions}
    for r in regions:  # the workload first, so that the checks' own reads do not warm the cache for it
        result.figures.setdefault("hit_ratio", {})[r] = hit_ratio(apis[r], expected)
        for name, ok, detail in check_reads(apis[r], expected):
            result.checks.append(Check(name + label(r, regions), ok, detail))
    probes = [(d, next(b for b, ds in expected.branches.items() if d in ds)) for d in sorted(expected.newest)[:20]]
    for r in regions:
        stream = resources[r].names["ReadingsStream"]

        def put(doc: dict[str, Any], kinesis: Any = clients[r]["kinesis"], stream: str = stream) -> None:
            data = json.dumps(doc).encode()
            kinesis.put_records(StreamName=stream, Records=[{"Data": data, "PartitionKey": doc["device_id"]}])

        result.figures.setdefault("freshness_ms", {})[r] = freshness(put, apis[r], probes)


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
            if key in f
        ),
        *(
            [
                f"replication     {f['replication']['replicated']:6d}   writes replicated (delay "
                f"{f['replication']['delay_ms']} ms), {f['replication']['superseded']} superseded by a later write, "
                f"lag p50 {f['replication']['lag_ms']['p50']} ms p99 {f['replication']['lag_ms']['p99']} ms; "
                f"reading origins {f.get('reading_origins')}",
                f"LATEST moved back by last-writer-wins (then repaired by the cache updater): "
                f"{f.get('latest_regressions')}",
            ]
            if "replication" in f
            else []
        ),
        f"latency (stream -> stored)  p50 {lat.get('p50')} ms   p99 {lat.get('p99')} ms   max {lat.get('max')} ms",
        *([stage_latency.line(f["stage_latency_s"])] if "stage_latency_s" in f else []),
        *(
            f"freshness{label(r, tuple(f['freshness_ms']))} (PutRecords -> API latest, pipeline idle)  "
            f"p50 {v.get('p50')} ms   "
            f"p95 {v.get('p95')} ms   max {v.get('max')} ms over {v['readings']} readings, {v['missed']} not seen "
            f"(goal < {FRESHNESS_GOAL_S * 1000:.0f} ms)"
            for r, v in f.get("freshness_ms", {}).items()
        ),
        *(
            f"cache hit ratio{label(r, tuple(f['hit_ratio']))}  {v['ratio']:.3f} of {v['requests']} skewed API reads "
            f"(goal {HIT_RATIO_GOAL})"
            for r, v in f.get("hit_ratio", {}).items()
        ),
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
