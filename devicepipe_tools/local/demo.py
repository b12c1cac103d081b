"""`devicepipe local demo`: the whole pipeline end to end on the local stack, checked.

Starts a stack of its own (state in ``.local/demo``), simulates devices across branches, produces the readings
plus a few poison pills through the real producer, waits until every event source mapping has drained, then
compares what each stage holds with what was produced and prints a verdict. Exit status 0 only if consistent.
"""

from __future__ import annotations

import base64
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicepipe.database import PgDatabase
from devicepipe.registry import import_registry
from devicepipe.repair import regressions
from devicepipe_tools import wording
from devicepipe_tools.fleet import fleet_registry
from devicepipe_tools.local import checks, stack, stage_latency
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
from devicepipe_tools.local.floor import batch_write_floor
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
class _Run:
    """What the demo's steps share: the stack and its clients, what was produced and where it went."""

    state: dict[str, Any]
    state_dir: Path
    regions: tuple[str, ...]
    clients: dict[str, dict[str, Any]]
    resources: dict[str, RegionResources]
    docs: list[dict[str, Any]]
    sent_to: dict[str, list[dict[str, Any]]]
    result: checks.Result = field(default_factory=checks.Result)

    def label(self, region: str) -> str:
        return label(region, self.regions)


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
) -> checks.Result:
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
    try:
        registry = fleet_registry(devices, branches)
        seed = PgDatabase.from_url(state["registry_url"])
        try:
            import_registry(seed, registry)
        finally:
            seed.close()
        docs = list(simulate(devices, branches, count=readings, seed=7))
        run = _Run(
            state,
            state_dir,
            regions,
            {r: local_clients(state["endpoint"], r, "kinesis", "dynamodb", "s3", "sqs") for r in regions},
            {r: stack.region_resources(state, r) for r in regions},
            docs,
            split_across_regions(docs, regions, in_every_region if len(regions) > 1 else 0.0),
        )
        run.result.figures["stack_start_s"] = round(time.monotonic() - t0, 1)
        say("measuring the moto server's BatchWriteItem floor ...")
        run.result.figures["floor"] = batch_write_floor(state["endpoint"], regions[0])
        progress = _feed(run, devices, branches, say)
        say("waiting for the pipeline to drain" + (" and replication to settle" if len(regions) > 1 else "") + " ...")
        _drain(run, progress, replication_delay_s, timeout_s, say)
        _check_stores(run, progress, timeout_s, say)
        say("running the branch reports and reading them back through each region's API ...")
        report_checks, figures = verify_reports(state, state_dir, docs, registry)
        run.result.checks += [checks.Check(*check) for check in report_checks]
        run.result.figures.update(figures)
        say("reading it back through each region's API ...")
        _verify_api(run)
        say("timing one reading from PutRecord to each store ...")
        run.result.figures["stage_latency_s"] = stage_latency.measure(state, state_dir)["seconds"]
        run.result.figures["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        if keep:
            say(f"stack left running; stop it with `{stack.command('down', state_dir)}`")
        else:
            stack.down(state_dir)
    return run.result


def _feed(run: _Run, devices: int, branches: int, say: Any) -> dict[str, Any]:
    """Every region's readings, with the poison pills among the first region's, through the real producer."""
    entries = {r: list(entries_from_readings(run.sent_to[r])) for r in run.regions}
    rng = random.Random(7)
    for name, payload in POISON_PILLS:
        into = entries[run.regions[0]]
        into.insert(rng.randrange(len(into) + 1), Entry(payload, f"poison-{name}", [f"poison {name}"]))
    spread = (
        f", across {', '.join(f'{r} ({len(run.sent_to[r])})' for r in run.regions)}"
        f", {sent_to_every_region(run.sent_to, run.regions)} of them to every region"
        if len(run.regions) > 1
        else ""
    )
    say(
        f"producing {len(run.docs)} readings from {devices} devices in {branches} branches, plus "
        f"{len(POISON_PILLS)} poison pills{spread} ..."
    )
    progress = _produce(run.clients, run.resources, entries, run.state_dir)
    progress["records_by_region"] = {r: len(e) for r, e in entries.items()}
    run.result.figures.update(progress)
    say(
        f"  {progress['produced']} records put in {progress['produce_s']:.1f}s ({progress['produce_rate']}/s), "
        f"{progress['produce_failed']} failed"
    )
    return progress


def _drain(run: _Run, progress: dict[str, Any], replication_delay_s: float, timeout_s: float, say: Any) -> None:
    """Wait until the pipeline drained; keep the mappings' figures, the throughput and, with several regions,
    replication's and last writer wins' figures."""
    figures = run.result.figures
    t_drain = time.monotonic()
    stats = checks.wait_drained(run.state_dir, progress["records_by_region"], timeout_s)
    figures["drain_s"] = round(time.monotonic() - t_drain, 1)
    figures["ingest"] = _mapping_figures(stats, "IngestEventSourceMapping")
    figures["latency_ms"] = stats.get(f"{run.regions[0]}/IngestEventSourceMapping", {}).get("latency_ms", {})
    for consumer in ("CacheUpdaterEventSourceMapping", "StagerEventSourceMapping"):
        figures[consumer] = _mapping_figures(stats, consumer)
    figures["throughput"] = throughput(stats, progress, figures["floor"]["items_per_s"])
    if len(run.regions) > 1:  # the cache updaters also apply the other regions' writes, one delay later
        figures["throughput"]["replication_delay_s"] = replication_delay_s
    say(throughput_line(figures["throughput"]))
    if len(run.regions) > 1:
        figures["replication"] = stack.replication_stats(run.state_dir)
        figures["latest_regressions"] = {
            r: _latest_regressions(
                DynamoDBStreamSource(
                    local_clients(run.state["endpoint"], r, "dynamodbstreams")["dynamodbstreams"],
                    run.resources[r].stream_arns["ReadingsTable"],
                    r,
                )
            )
            for r in run.regions
        }


def _check_stores(run: _Run, progress: dict[str, Any], timeout_s: float, say: Any) -> None:
    """What each store holds against what was produced (``checks``), and the quarantine against the pills."""
    result, first = run.result, run.regions[0]
    failed = progress["produce_failed"]
    result.checks.append(checks.Check("producer", failed == 0, f"{failed} records failed to send"))
    tables = {
        r: checks.verify_table(result, r, run.clients[r], run.resources[r], run.docs, run.label(r)) for r in run.regions
    }
    if len(run.regions) > 1:
        checks.verify_regions_agree(result, tables)
    _verify_quarantine(result, run.clients[first], run.resources[first])
    for r in run.regions:
        checks.verify_failure_queue(result, run.clients[r], run.resources[r], run.label(r))
        checks.verify_cache(result, run.state["redis_urls"][r], run.docs, run.label(r))
    checks.verify_staging(result, {r: (run.clients[r]["s3"], run.resources[r]) for r in run.regions}, run.sent_to)
    say("waiting for the warehouse loader ...")
    checks.verify_warehouse(result, run.state, run.state_dir, run.docs, timeout_s)


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
    started_at = time.time()  # wall clock: the workers' last_done_at is compared with it
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
        "produce_started_at": started_at,
    }


#: The mappings whose work counts in the demo's throughput: the path to readers. The stager's last batch waits
#: for its batching window (30 s) by design, so the time to stage everything says little of throughput.
THROUGHPUT_MAPPINGS = ("IngestEventSourceMapping", "CacheUpdaterEventSourceMapping")


def throughput(stats: dict[str, Any], progress: dict[str, Any], floor_items_per_s: int) -> dict[str, Any]:
    """Readings per second from the first PutRecords to the last record done by the ingest and cache updater
    (as their workers recorded it), and that as a ratio to the moto server's BatchWriteItem floor."""
    ends = [s.get("last_done_at") or 0.0 for name, s in stats.items() if name.endswith(THROUGHPUT_MAPPINGS)]
    seconds = max(max(ends, default=0.0) - progress["produce_started_at"], 1e-3)
    per_s = progress["produced"] / seconds
    return {
        "readings_per_s": round(per_s),
        "seconds": round(seconds, 2),
        "floor_items_per_s": floor_items_per_s,
        "ratio_to_floor": round(per_s / floor_items_per_s, 3) if floor_items_per_s else None,
    }


def throughput_line(t: dict[str, Any]) -> str:
    delay = t.get("replication_delay_s")
    return (
        f"throughput      {t['readings_per_s']:6d}   readings/s (first PutRecords -> last one stored and cached, "
        f"{t['seconds']} s{f', replication delay of {delay:g} s included' if delay else ''}), "
        f"{t['ratio_to_floor']:.3f}x the moto server's BatchWriteItem floor of {t['floor_items_per_s']} items/s"
    )


def _latest_regressions(source: DynamoDBStreamSource) -> int:
    """How often last writer wins moved a LATEST item back in this region (each one repaired since)."""
    return sum(1 for record in read_all(source) if regressions([record.event]))


def _mapping_figures(stats: dict[str, Any], mapping: str) -> dict[str, Any]:
    """A mapping's counters summed over the regions."""
    keys = ("invocations", "records_done", "partial_failures", "function_errors", "sent_to_destination")
    per_region = [s for name, s in stats.items() if name.endswith(f"/{mapping}")]
    return {k: sum(s.get(k) or 0 for s in per_region) for k in keys}


def _verify_quarantine(result: checks.Result, clients: dict[str, Any], res: RegionResources) -> None:
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
        checks.Check(
            "quarantine: every bad record kept with its reason",
            not unmatched and len(quarantined) == len(POISON_PILLS) and all(by_payload.values()),
            f"{len(quarantined)} quarantined of {len(POISON_PILLS)} bad; missing {unmatched or 'none'}",
        )
    )


def _counters(c: dict[str, Any]) -> str:
    return (
        f"{wording.count(c.get('invocations', 0), 'invocation')}, {wording.count(c.get('records_done', 0), 'record')}, "
        f"{wording.count(c.get('function_errors', 0), 'error')}, "
        f"{wording.count(c.get('partial_failures', 0), 'partial failure')}, {c.get('sent_to_destination')} given up"
    )


def _verify_api(run: _Run) -> None:
    """Each region's API answers what was produced; then its freshness and cache hit ratio (after the checks:
    the freshness probe writes new readings)."""
    result = run.result
    expected = Expected.of(run.docs)
    apis = {r: ReadClient(run.state["api_urls"][r]) for r in run.regions}
    for r in run.regions:  # the workload first, so that the checks' own reads do not warm the cache for it
        result.figures.setdefault("hit_ratio", {})[r] = hit_ratio(apis[r], expected)
        for name, ok, detail in check_reads(apis[r], expected):
            result.checks.append(checks.Check(name + run.label(r), ok, detail))
    probes = [(d, next(b for b, ds in expected.branches.items() if d in ds)) for d in sorted(expected.newest)[:20]]
    for r in run.regions:
        stream = run.resources[r].names["ReadingsStream"]

        def put(doc: dict[str, Any], kinesis: Any = run.clients[r]["kinesis"], stream: str = stream) -> None:
            data = json.dumps(doc).encode()
            kinesis.put_records(StreamName=stream, Records=[{"Data": data, "PartitionKey": doc["device_id"]}])

        result.figures.setdefault("freshness_ms", {})[r] = freshness(put, apis[r], probes)


def render(result: checks.Result) -> str:
    f = result.figures
    lat = f.get("latency_ms", {})
    lines = [
        "",
        "stage            count   detail",
        f"produced        {f.get('produced', 0):6d}   {f.get('produce_rate', 0)} records/s, "
        f"{wording.count(f.get('put_records_calls', 0), 'PutRecords call')}, {f.get('produce_failed', 0)} failed",
        f"stored          {f.get('readings_stored', 0):6d}   of {f.get('readings_expected', 0)} good readings; "
        f"{f.get('latest_items', 0)} LATEST items",
        f"quarantined     {f.get('quarantined', 0):6d}   "
        + ", ".join(f"{k}: {v[:48]}" for k, v in list(f.get("quarantine_reasons", {}).items())[:3])
        + ", ...",
        f"cached          {f.get('cached_devices', 0):6d}   devices with their newest reading in Redis",
        f"staged          {f.get('staged_rows', 0):6d}   rows in "
        f"{wording.count(f.get('staged_objects', 0), 'gzip object')}",
        f"warehouse       {f.get('warehouse_rows', 0):6d}   rows; "
        f"{wording.count(f.get('copy_statements', 0), 'COPY statement')} "
        f"in {wording.count(f.get('load_cycles', 0), 'load cycle')}",
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
                f"{wording.percentiles('lag', f['replication']['lag_ms'])}; "
                f"readings by origin region: {wording.by_key(f.get('reading_origins', {}))}",
                f"LATEST moved back by last-writer-wins (then repaired by the cache updater): "
                f"{wording.by_key(f.get('latest_regressions', {}))}",
            ]
            if "replication" in f
            else []
        ),
        *([throughput_line(f["throughput"])] if "throughput" in f else []),
        wording.percentiles("latency (stream -> stored)", lat, ("p50", "p99", "max")),
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
