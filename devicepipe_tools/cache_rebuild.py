"""`devicepipe cache rebuild`: refill an emptied or replaced Redis cache from the readings table.

The cache is derived data: every device's newest reading is its LATEST item in the table, and the sparse
``ByBranchLatest`` index holds exactly those items (one per device, projection ALL). A rebuild

1. scans that index page by page (each device's LATEST item, once);
2. writes the items in pipelines of ``batch`` (500) through ``CacheWriter.apply``: the cache updater's own Lua
   compare-and-set, so a reading the cache updater wrote meanwhile, newer than the table's LATEST, is kept
   (counted as ``kept``), and a device that moved branch meanwhile is not put back in its old branch;
3. reads back each written device's cached branch and time (the cache's newest, not the table's) and finally
   marks every branch view and the branch list loaded (``CacheWriter.load_views``), so the read API trusts
   them again instead of reading branches from the index.

It is idempotent: a second run changes nothing (every compare-and-set finds an equal version). LATEST items whose
``expires_at`` has passed (DynamoDB's TTL deletes them within days) are skipped: the cache would expire them at
once. The read API answers from the table whatever the cache holds, so a rebuild restores the hit ratio (and the
table's read load), not correctness. docs/recovery.md has the runbook and the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib
from botocore.exceptions import BotoCoreError, ClientError

from devicepipe.cache import CacheUnavailable, CacheWriter, Update, epoch_ms, update_from_item
from devicepipe.dynamo import latest_item, reading_item
from devicepipe.models import parse_reading, unmarshal_item
from devicepipe.reads import BRANCH_INDEX
from devicepipe_tools import wording

#: Devices per Redis pipeline: a few hundred compare-and-set calls are one round trip of a few hundred KB.
DEFAULT_BATCH = 500
#: ``load_views`` members per pipeline at the end (every set is already complete by then: see ``rebuild``).
_VIEWS_BATCH = 5_000


class RebuildError(RuntimeError):
    """The rebuild could not run or stopped; the message says where and what to do."""


@dataclass
class Target:
    """One region's cache and table."""

    region: str
    table: str
    dynamodb: Any
    redis: Any
    where: str  # the Redis it writes to, for messages (never the AUTH token)
    prefix: str = "dp"
    retention_days: int = 90


@dataclass
class RebuildReport:
    region: str
    table: str
    devices: int = 0  # LATEST items scanned
    written: int = 0  # cached reading replaced (or none was cached)
    kept: int = 0  # the cache already held this or a newer reading
    expired: int = 0  # LATEST items past their TTL, skipped
    branches: int = 0  # branch views marked loaded
    pipelines: int = 0  # Redis round trips
    scan_pages: int = 0
    seconds: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def rate(self) -> float:
        return self.devices / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.region}: {wording.count(self.devices, 'device')} scanned from {self.table}/{BRANCH_INDEX} in "
            f"{wording.count(self.scan_pages, 'page')}; {self.written} written, {self.kept} kept (cache as new or "
            f"newer), {self.expired} expired skipped; {wording.count(self.branches, 'branch view')} marked loaded; "
            f"{wording.count(self.pipelines, 'Redis pipeline')}; "
            f"{self.seconds:.2f} s ({self.rate:,.0f} devices/s)"
        )

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")} | {"devices_per_s": round(self.rate)}


def rebuild(
    target: Target,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[RebuildReport], None] | None = None,
    now_s: Callable[[], float] = time.time,
) -> RebuildReport:
    """Rebuild ``target``'s cache from its table; raises ``RebuildError`` (after what was done, which a rerun
    does not redo) when the table or Redis fails."""
    if batch < 1:
        raise RebuildError("batch must be at least 1")
    report = RebuildReport(target.region, target.table)
    writer = CacheWriter(target.redis, prefix=target.prefix, retention_s=target.retention_days * 86_400)
    _ping(target)
    members: list[tuple[str, str, int]] = []
    chunk: list[Update] = []
    try:
        for item in _latest_items(target, report):
            report.devices += 1
            if int(item.get("expires_at", 0) or 0) and int(item["expires_at"]) <= now_s():
                report.expired += 1
                continue
            chunk.append(update_from_item(item, str(item["latest_at"])))
            if len(chunk) >= batch:
                members += _write(writer, chunk, report)
                chunk = []
                if progress:
                    progress(_timed(report))
        if chunk:
            members += _write(writer, chunk, report)
        # Every branch set is complete now (each compare-and-set added its device), so the views may be marked
        # loaded in as many pipelines as it takes.
        for start in range(0, len(members), _VIEWS_BATCH):
            writer.load_views(members[start : start + _VIEWS_BATCH])
            report.pipelines += 1
        if not members:
            writer.load_views([])  # an empty table: the (empty) branch list is complete too
            report.pipelines += 1
    except CacheUnavailable as exc:
        raise RebuildError(
            f"{target.region}: Redis at {target.where} failed after {report.written + report.kept} devices: {exc}. "
            "Nothing written is lost and a rebuild is idempotent: run it again."
        ) from exc
    report.branches = len({branch for branch, _, _ in members})
    return _timed(report)


def _timed(report: RebuildReport) -> RebuildReport:
    report.seconds = round(time.monotonic() - report._started, 3)
    return report


def _ping(target: Target) -> None:
    try:
        target.redis.ping()
    except redis_lib.exceptions.RedisError as exc:
        raise RebuildError(f"{target.region}: cannot reach Redis at {target.where}: {exc}") from exc


def _latest_items(target: Target, report: RebuildReport) -> Iterator[dict[str, Any]]:
    """Every LATEST item of the table, from its sparse branch index."""
    try:
        pages = target.dynamodb.get_paginator("scan").paginate(TableName=target.table, IndexName=BRANCH_INDEX)
        for page in pages:
            report.scan_pages += 1
            yield from (unmarshal_item(i) for i in page.get("Items", []))
    except ClientError as exc:
        code, message = exc.response["Error"].get("Code", ""), exc.response["Error"].get("Message", "")
        if code == "ResourceNotFoundException":
            raise RebuildError(f"{target.region}: no table {target.table} (or it is not active): {message}") from exc
        if code == "ValidationException" and "index" in message.lower():
            raise RebuildError(f"{target.region}: table {target.table} has no index {BRANCH_INDEX}: {message}") from exc
        raise RebuildError(f"{target.region}: scanning {target.table}/{BRANCH_INDEX}: {code}: {message}") from exc
    except BotoCoreError as exc:
        raise RebuildError(f"{target.region}: scanning {target.table}/{BRANCH_INDEX} failed: {exc}") from exc


def _write(writer: CacheWriter, chunk: Sequence[Update], report: RebuildReport) -> list[tuple[str, str, int]]:
    """Compare-and-set one chunk; returns ``(branch, device, last seen ms)`` as the cache now holds them."""
    written = writer.apply(chunk)
    report.written += written
    report.kept += len(chunk) - written
    report.pipelines += 1
    # What the cache holds now: the table's reading, or a newer one (maybe of another branch) that stayed.
    pipe = writer.redis.pipeline(transaction=False)
    for u in chunk:
        pipe.hmget(writer.device_key(u.device_id), "branch_id", "ts")
    try:
        held = pipe.execute()
    except redis_lib.exceptions.RedisError as exc:
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    report.pipelines += 1
    return [
        (_text(branch), u.device_id, epoch_ms(_text(ts)))
        for u, (branch, ts) in zip(chunk, held, strict=True)
        if branch is not None and ts is not None  # expired or evicted meanwhile: nothing to list
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------- targets
def local_targets(state: dict[str, Any], regions: Iterable[str] | None = None) -> list[Target]:
    """The local stack's regions (all, or ``regions``): each region's table on moto and its Redis database."""
    from devicepipe_tools.local.resources import clients
    from devicepipe_tools.local.stack import StackError, region_resources

    chosen = list(regions or state["regions"])
    targets = []
    for region in chosen:
        res = region_resources(state, region)  # StackError naming the regions it runs
        if region not in state["redis_urls"]:
            raise StackError(f"the local stack has no Redis for {region}")
        url = state["redis_urls"][region]
        targets.append(
            Target(
                region,
                res.names["ReadingsTable"],
                clients(state["endpoint"], region, "dynamodb")["dynamodb"],
                redis_lib.Redis.from_url(url, socket_timeout=10),
                url,
            )
        )
    return targets


def aws_target(
    region: str,
    stack_name: str,
    table: str | None = None,
    redis_url: str | None = None,
    session: Any = None,
) -> Target:
    """A deployed region's cache: the stack's ``TableName`` and ``RedisEndpoint`` outputs, TLS with the AUTH
    token from its ``RedisAuthSecret``. Redis is reachable only from inside the stack's VPC: run this there, or
    through a tunnel given as ``redis_url`` (``rediss://:TOKEN@localhost:6379/0``)."""
    import boto3

    from devicepipe.cache import connect
    from devicepipe.config import CacheSettings

    session = session or boto3.session.Session(region_name=region)
    try:
        cloudformation = session.client("cloudformation", region_name=region)
        stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        table = table or outputs.get("TableName")
        host = outputs.get("RedisEndpoint", "")
        secret = ""
        if not redis_url:
            secret = cloudformation.describe_stack_resource(StackName=stack_name, LogicalResourceId="RedisAuthSecret")[
                "StackResourceDetail"
            ]["PhysicalResourceId"]
        if not table or not (host or redis_url):
            raise RebuildError(f"{region}: stack {stack_name} has no TableName/RedisEndpoint output")
        settings = CacheSettings(
            region=region, table_name=table, redis_url=redis_url or "", redis_host=host, redis_auth_secret_arn=secret
        )
        client = connect(settings, session.client("secretsmanager", region_name=region), timeout_s=10)
    except ClientError as exc:
        raise RebuildError(f"{region}: stack {stack_name}: {exc.response['Error'].get('Message', exc)}") from exc
    except BotoCoreError as exc:
        raise RebuildError(f"{region}: {exc}") from exc
    where = "the given --redis-url" if redis_url else f"{host}:6379 (TLS)"
    return Target(region, table, session.client("dynamodb", region_name=region), client, where)


# ------------------------------------------------------------------------------------------- timing
def seed_latest(
    dynamodb: Any,
    table: str,
    devices: int,
    branches: int,
    prefix: str = "rb",
    base_ms: int | None = None,
    origin_region: str = "us-east-1",
) -> list[dict[str, Any]]:
    """Write ``devices`` LATEST items straight to the table (the ingest's item builders, no pipeline), for
    timing a rebuild on the local stack; returns them (plain). A minute apart per device, the newest now."""
    now_s = time.time()
    base = base_ms if base_ms is not None else int(now_s * 1000) - devices * 60_000
    written: list[dict[str, Any]] = []
    requests = []
    for i in range(devices):
        doc = {
            "device_id": f"{prefix}-{i:06d}",
            "branch_id": f"{prefix}-branch-{i % branches:03d}",
            "ts": base + i * 60_000,
            "seq": i,
            "metrics": {"temp": 20 + i % 7, "rssi": -60 - i % 30},
        }
        r = parse_reading(doc, now_s=now_s)
        reading_item(r.attributes, r.epoch_s, {"S": origin_region}, {"S": "2026-11-02T10:00:00.000000Z"}, 90 * 86_400)
        item = latest_item(r)
        requests.append({"PutRequest": {"Item": item}})
        written.append(unmarshal_item(item))
    for start in range(0, len(requests), 25):
        pending = {table: requests[start : start + 25]}
        while pending:
            pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    return written


if __name__ == "__main__":  # time a rebuild on the running local stack: python -m devicepipe_tools.cache_rebuild N
    import json
    import sys

    from devicepipe_tools.local.stack import STATE_DIR, read_state

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    state_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else STATE_DIR
    t = local_targets(read_state(state_dir))[0]
    seed_latest(t.dynamodb, t.table, count, max(1, count // 50), prefix=f"rb{count}")
    t.redis.flushdb()
    print(json.dumps(rebuild(t).summary(), indent=1))
