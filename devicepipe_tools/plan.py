"""`devicepipe plan`: what a device fleet needs from this application, and what it costs a month.

The planner reads the deployed settings from template.yaml (shard count, event source mappings' batch sizes and
windows, filters, function memory, TTL, staging retention, load schedule, node and instance types, interface
endpoints, alarms) and combines them with a :class:`Fleet` and a :class:`Prices` table
(``devicepipe_tools/prices.toml``). Everything here is a pure function of those three inputs; rendering is separate.
Each modelling assumption is a named constant below, and docs/plan.md explains every one of them.

Steady state is modelled (a month at the fleet's rate, TTL and lifecycle expiry running), at AWS's 730-hour month.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from devicepipe.compaction import Sizing
from devicepipe.loader import LATE_ARRIVAL_S
from devicepipe_tools.local.esm import matches
from devicepipe_tools.local.resources import RegionResources, Resolver
from devicepipe_tools.template import function_environment

PRICES = Path(__file__).resolve().parent / "prices.toml"

HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
GIB = 1024**3
MIB = 1024**2

# ----------------------------------------------------------------------------------------------- assumptions
#: Kinesis per-shard write limits (Kinesis quotas page; the API reference says MiB).
KINESIS_RECORDS_PER_SHARD = 1000
KINESIS_BYTES_PER_SHARD = MIB
#: A PUT payload unit is a 25 KB chunk of one record (Kinesis pricing page).
PUT_PAYLOAD_UNIT_BYTES = 25 * 1024
#: Bytes of the partition key (the device id) that count towards a record's size.
PARTITION_KEY_BYTES = 16
#: How often Lambda polls each shard when it has caught up (README, "Stream consumers").
POLLS_PER_S = {"kinesis": 1.0, "dynamodb": 4.0}
#: Lambda closes a stream batch at 6 MB of event, the invocation payload quota, whatever the BatchSize
#: (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html, "Polling and batching streams").
PAYLOAD_BYTES = 6 * 1024 * 1024
#: A table stream record in Lambda's event, beyond the reading's own JSON: the item's typed attributes, keys
#: and the record's metadata (960 B for a 165 B reading, measured by benchmarks/bench_consumers.py).
STREAM_RECORD_EXTRA_BYTES = 795
#: A DynamoDB item's bytes beyond the reading's JSON: keys, origin_region, ingested_at, expires_at and attribute
#: names (worked out for the simulator's readings in docs/plan.md); the LATEST item adds latest_branch/latest_at.
READING_ITEM_EXTRA_BYTES = 110
LATEST_ITEM_EXTRA_BYTES = 145
#: DynamoDB bills storage with 100 bytes of indexing overhead per item (DynamoDB pricing page).
DDB_ITEM_STORAGE_OVERHEAD = 100
#: TTL deletes expired items within days, not at once: expired items stay billed this long (assumption).
TTL_LAG_DAYS = 2
#: A stream shard per table partition; a partition holds about 10 GB and 1,000 write units/s (assumption).
PARTITION_GB = 10
PARTITION_WRITE_UNITS = 1000
#: The read API's request mix (the read benchmark's): /latest, branch listings, the branch list.
READ_MIX = {"latest": 0.70, "branch": 0.25, "branches": 0.05}
#: One staged row's JSON beyond the reading (origin_region, ingested_at, extra), measured on simulated readings.
STAGED_ROW_EXTRA_BYTES = 87
#: gzip output / input for staged JSON lines: 0.05-0.15 measured on simulated readings; real ones vary more.
STAGED_GZIP_RATIO = 0.25
#: Loader: manifest bounds (MANIFEST_MAX_OBJECTS, MANIFEST_MAX_BYTES) and list page size.
MANIFEST_MAX_OBJECTS = 500
MANIFEST_MAX_BYTES = 512 * MIB
S3_LIST_PAGE = 1000
#: Redshift Serverless per load cycle: statements' fixed time plus rows at this rate, billed 60 s at least.
LOAD_FIXED_S = 30.0
LOAD_ROWS_PER_S = 50_000
REDSHIFT_MIN_BILLED_S = 60.0
#: The warehouse keeps every reading (no retention): storage is costed after this many months of history.
WAREHOUSE_MONTHS = 12
#: Redis memory per device beyond the reading's JSON: the hash's other fields, its expiry, its branch-set
#: member (measured with CacheWriter on redis-server 7.0: 1,318 B for a 248-byte reading, 2,130 B for 1,048).
REDIS_DEVICE_EXTRA_BYTES = 1080
REDIS_BASELINE_BYTES = 8 * MIB
#: ElastiCache reserves this share of a node's memory (reserved-memory-percent default) for overhead.
REDIS_RESERVED_SHARE = 0.25
#: Lambda gives a function one full vCPU at 1,769 MB, proportionally less below (Lambda memory docs).
FULL_VCPU_MB = 1769
#: CloudWatch Logs bytes per invocation: one JSON summary line plus START/END/REPORT.
LOG_BYTES_PER_INVOCATION = 1200
#: Aurora storage for the registry (branches, devices, metric definitions): tiny; billed at least this much.
AURORA_MIN_STORAGE_GB = 1.0
AURORA_BYTES_PER_DEVICE = 1024
#: A full deployment gives each stack the other's names (README, "Deploy"): parameters left empty by default whose
#: name ends like these are set, so conditions such as HasReplicaStream evaluate as they would once deployed.
DEPLOYED_PARAMETER_SUFFIXES = ("Arn", "Bucket", "BucketName", "KeyId")
DEPLOYED_STREAM_ARN = "arn:aws:dynamodb:deployed:000000000000:table/deployed/stream/deployed"


@dataclass(frozen=True)
class Profile:
    """Duration of one invocation: ``fixed_ms + n * (io_us + cpu_us * cpu_scale) / 1000`` for n records."""

    fixed_ms: float
    cpu_us: float  # per record, measured on one core; scaled by 1,769 MB / MemorySize below that
    io_us: float = 0.0  # per record, waiting on calls (not scaled)
    basis: str = ""


#: Per role, from `make bench` through the functions' real boto3 clients (docs/benchmarks.md; docs/plan.md says how
#: each number was derived).
PROFILES = {
    "ingest": Profile(
        16.0, 47.5, 4.0, "make bench, real client: 62-73 ms per 1,000 records with DynamoDB at 8 ms; 47.5 us CPU each"
    ),
    "cache": Profile(3.0, 24.6, 0.0, "make bench, real clients: 1 Redis round trip per batch, 24.6 us CPU per record"),
    "stager": Profile(25.0, 16.0, 0.0, "make bench, real client: 1 S3 PUT per batch (~25 ms assumed), 16 us CPU each"),
    "repair": Profile(2.0, 5.0, 0.0, "assumed: compares two images per record; writes only on (rare) regressions"),
    "stream": Profile(5.0, 25.0, 0.0, "assumed for a stream function without a benchmark figure"),
}
READ_HIT_CPU_US, READ_MISS_CPU_US, READ_MISS_WAIT_MS, READ_FIXED_MS = 300.0, 1200.0, 8.0, 2.0


class PlanError(ValueError):
    """Bad input (fleet, template, price table): the message says what and how to fix it."""


# ----------------------------------------------------------------------------------------------- inputs
REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")


@dataclass(frozen=True)
class Fleet:
    """The devices and how they are read; the first region is the primary (warehouse, Aurora writer)."""

    devices: int
    interval_s: float
    branches: int
    regions: tuple[str, ...]
    reading_bytes: int = 200
    reads_per_s: float = 5.0  # read API requests per second, all regions together
    cache_hit_ratio: float = 0.85  # the seed's target
    headroom: float = 2.0  # provisioned capacity / average load

    def __post_init__(self) -> None:
        problems = [*self._size_problems(), *self._region_problems(), *self._read_problems()]
        if problems:
            raise PlanError("; ".join(problems))

    def _size_problems(self) -> Iterator[str]:
        if self.devices < 1:
            yield "--devices must be at least 1"
        if not self.interval_s > 0 or not math.isfinite(self.interval_s):
            yield "--interval must be a positive number of seconds"
        if self.branches < 1:
            yield "--branches must be at least 1"
        elif self.branches > self.devices:
            yield f"--branches ({self.branches}) cannot exceed --devices ({self.devices})"

    def _region_problems(self) -> Iterator[str]:
        if not self.regions:
            yield "--regions needs at least one region"
        for region in self.regions:
            if not REGION_RE.match(region):
                yield f"--regions: {region!r} is not a region name like us-east-1"
        if len(set(self.regions)) != len(self.regions):
            yield "--regions names a region twice"

    def _read_problems(self) -> Iterator[str]:
        """The readings' size and how the fleet is read."""
        if self.reading_bytes < 1:
            yield "--reading-bytes must be at least 1"
        if not self.reads_per_s >= 0 or not math.isfinite(self.reads_per_s):
            yield "--reads-per-second must be zero or more"
        if not 0 <= self.cache_hit_ratio <= 1:
            yield "--cache-hit-ratio must be between 0 and 1"
        if not self.headroom >= 1 or not math.isfinite(self.headroom):
            yield "--headroom must be at least 1"

    @property
    def primary(self) -> str:
        return self.regions[0]

    @property
    def readings_per_s(self) -> float:
        return self.devices / self.interval_s


#: The fleet the seed's cost table implies (docs/plan.md, "The seed's fleet").
SEED_FLEET = {"devices": 1000, "interval_s": 60.0, "branches": 50}
#: The seed's own monthly estimate, by the service it named.
SEED_COSTS = {
    "Aurora PostgreSQL": 225.0,  # "RDS primary $85, two read replicas $70 each"
    "ElastiCache Redis": 25.0,
    "Kinesis": 15.0,  # "4 shards"
    "DynamoDB": 20.0,  # "on-demand"
}
SEED_TOTAL = 285.0


@dataclass(frozen=True)
class Price:
    item: str
    region: str
    usd: float
    unit: str
    date: str
    source: str
    seen: str = ""


@dataclass
class Prices:
    """Unit prices by (item, region); a missing region falls back to the default region, noted in ``fallbacks``."""

    lines: dict[tuple[str, str], Price]
    default_region: str
    nodes_gib: dict[str, float]
    fallbacks: set[tuple[str, str]] = field(default_factory=set)

    def usd(self, item: str, region: str) -> float:
        if (item, region) in self.lines:
            return self.lines[item, region].usd
        if (item, self.default_region) in self.lines:
            self.fallbacks.add((item, region))
            return self.lines[item, self.default_region].usd
        raise PlanError(
            f"prices.toml has no price for {item!r} (add a [[price]] line for {region} or {self.default_region})"
        )


def load_prices(path: Path = PRICES) -> Prices:
    """The price table; a malformed file is a :class:`PlanError` naming the problem."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(f"cannot read the price table {path}: {exc}") from None
    lines: dict[tuple[str, str], Price] = {}
    for n, raw in enumerate(doc.get("price", []), 1):
        try:
            price = Price(**raw)
            if not isinstance(price.usd, int | float) or price.usd < 0:
                raise TypeError("usd must be a number >= 0")
        except TypeError as exc:
            raise PlanError(f"{path.name}: price line {n} ({raw.get('item', '?')}): {exc}") from None
        if (price.item, price.region) in lines:
            raise PlanError(f"{path.name}: {price.item} for {price.region} is priced twice")
        lines[price.item, price.region] = price
    meta = doc.get("meta", {})
    return Prices(lines, str(meta.get("default_region", "us-east-1")), dict(doc.get("nodes", {})))


# ----------------------------------------------------------------------------------------------- the template
@dataclass(frozen=True)
class Trigger:
    """What invokes a function: a stream mapping, a schedule or HTTP requests."""

    kind: str  # kinesis | dynamodb | schedule | http
    batch_size: int = 1
    window_s: float = 0.0
    parallelization: int = 1
    patterns: tuple[dict[str, Any], ...] = ()  # filter patterns (region substituted)
    rate_minutes: float = 0.0
    source: str = ""  # logical id of the mapping or event


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    memory_mb: int
    reserved: int | None
    roles: tuple[str, ...]
    triggers: tuple[Trigger, ...]


@dataclass(frozen=True)
class RegionSettings:
    """What one region's stack deploys, as the template says (conditions evaluated for that region)."""

    region: str
    primary: bool
    kinesis_shards: int
    functions: tuple[FunctionSpec, ...]
    redis_node_type: str
    redis_nodes: int
    aurora_class: str
    aurora_instances: int
    redshift_base_rpu: int  # 0: no warehouse in this region
    interface_endpoint_azs: int  # sum over interface endpoints of their subnets
    interface_endpoints: int
    alarms: int
    dashboards: int
    kms_keys: int
    secrets: int
    staging_replicates: bool = False  # this region's staging bucket replicates into the primary's
    staging_replication_rtc: bool = False  # with S3 Replication Time Control


@dataclass(frozen=True)
class Settings:
    regions: tuple[RegionSettings, ...]
    reading_ttl_days: int
    staging_retention_days: int
    load_interval_minutes: float
    pitr: bool
    gsis: int
    max_reading_bytes: int

    def region(self, name: str) -> RegionSettings:
        return next(r for r in self.regions if r.region == name)

    @property
    def primary(self) -> RegionSettings:
        return next(r for r in self.regions if r.primary)


class _Context(Resolver):
    """The local stack's resolver, for one region of a full deployment: parameters at their defaults (the other
    stack's names filled in), conditions evaluated; references to resources stay as they are written."""

    def __init__(self, template: dict[str, Any], region: str, fleet: Fleet) -> None:
        super().__init__(template, RegionResources(region=region))
        for name, value in list(self.params.items()):
            if value == "" and name.endswith(DEPLOYED_PARAMETER_SUFFIXES):
                self.params[name] = DEPLOYED_STREAM_ARN if "Stream" in name else "deployed"
        self.params["PrimaryRegion"] = fleet.primary
        self.params["SecondaryRegion"] = fleet.regions[1] if len(fleet.regions) > 1 else fleet.primary
        self.region = region

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return None
        if name in self.pseudo or name in self.params:
            return super()._ref(name)
        return {"Ref": name}

    def _get_att(self, logical: str, attr: str) -> Any:
        return {"Fn::GetAtt": [logical, attr]}

    def condition(self, name: str) -> bool:
        if name not in self.template.get("Conditions", {}):
            raise PlanError(f"template.yaml: unknown condition {name!r}")
        return super().condition(name)

    def deployed(self, resource: dict[str, Any]) -> bool:
        return "Condition" not in resource or self.condition(resource["Condition"])

    def value(self, v: Any) -> Any:
        return self.resolve(v)

    def number(self, v: Any, what: str) -> float:
        try:
            return float(self.value(v))
        except (TypeError, ValueError):
            raise PlanError(f"template.yaml: {what} is not a number ({v!r})") from None


def _resources(template: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(k, r) for k, r in template.get("Resources", {}).items() if r.get("Type") == kind]


def _one(template: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    found = _resources(template, kind)
    if not found:
        raise PlanError(f"template.yaml has no {kind} resource")
    return found[0]


def settings_from_template(template: dict[str, Any], fleet: Fleet) -> Settings:
    """The settings the planner uses, read from the template for each of the fleet's regions."""
    primary = _Context(template, fleet.primary, fleet)
    ttl = int(primary.number({"Ref": "ReadingTtlDays"}, "ReadingTtlDays"))
    _, table = _one(template, "AWS::DynamoDB::GlobalTable")
    tprops = table["Properties"]
    pitr = any(
        r.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled")
        for r in tprops.get("Replicas", [])
    )
    retention = 0
    for logical_id, bucket in _resources(template, "AWS::S3::Bucket"):
        if logical_id == "StagingBucket":
            for rule in bucket["Properties"].get("LifecycleConfiguration", {}).get("Rules", []):
                if "ExpirationInDays" in rule and not rule.get("Prefix"):  # the whole bucket's, not a prefix's
                    retention = int(primary.number(rule["ExpirationInDays"], "StagingBucket expiry"))
    if not retention:
        raise PlanError("template.yaml: StagingBucket has no lifecycle expiry (ExpirationInDays)")
    regions = tuple(_region_settings(template, _Context(template, r, fleet), r == fleet.primary) for r in fleet.regions)
    schedules = [t.rate_minutes for r in regions for f in r.functions for t in f.triggers if t.kind == "schedule"]
    ingest_env = function_environment(template, next(f.name for f in regions[0].functions if "ingest" in f.roles))
    return Settings(
        regions=regions,
        reading_ttl_days=ttl,
        staging_retention_days=retention,
        load_interval_minutes=min(schedules) if schedules else 0.0,
        pitr=bool(pitr),
        gsis=len(tprops.get("GlobalSecondaryIndexes", [])),
        max_reading_bytes=int(ingest_env.get("MAX_READING_BYTES", 65536)),
    )


def _region_settings(template: dict[str, Any], ctx: _Context, primary: bool) -> RegionSettings:
    _, stream = _one(template, "AWS::Kinesis::Stream")
    shards = int(ctx.number(stream["Properties"].get("ShardCount", 0), "ShardCount"))
    if shards < 1:
        raise PlanError("template.yaml: the Kinesis stream has no ShardCount (on-demand mode is not modelled)")
    _, redis = _one(template, "AWS::ElastiCache::ReplicationGroup")
    rprops = redis["Properties"]
    nodes = int(ctx.number(rprops.get("NumCacheClusters", 1), "NumCacheClusters"))
    aurora = [r for _, r in _resources(template, "AWS::RDS::DBInstance") if ctx.deployed(r)]
    workgroups = [r for _, r in _resources(template, "AWS::RedshiftServerless::Workgroup") if ctx.deployed(r)]
    endpoints = [
        r
        for _, r in _resources(template, "AWS::EC2::VPCEndpoint")
        if ctx.deployed(r) and r["Properties"].get("VpcEndpointType") == "Interface"
    ]
    secrets = len([r for _, r in _resources(template, "AWS::SecretsManager::Secret") if ctx.deployed(r)])
    for kind, prop in (
        ("AWS::RDS::DBCluster", "ManageMasterUserPassword"),
        ("AWS::RedshiftServerless::Namespace", "ManageAdminPassword"),
    ):
        secrets += sum(
            1 for _, r in _resources(template, kind) if ctx.deployed(r) and ctx.value(r["Properties"].get(prop)) is True
        )

    def count(kind: str) -> int:
        return sum(1 for _, r in _resources(template, kind) if ctx.deployed(r))

    staging = template["Resources"].get("StagingBucket", {}).get("Properties", {})
    replication = ctx.value(staging.get("ReplicationConfiguration"))
    rtc = isinstance(replication, dict) and any(
        rule.get("Destination", {}).get("ReplicationTime", {}).get("Status") == "Enabled"
        for rule in replication.get("Rules", [])
    )

    return RegionSettings(
        region=ctx.region,
        primary=primary,
        kinesis_shards=shards,
        functions=_functions(template, ctx),
        redis_node_type=str(ctx.value(rprops["CacheNodeType"])),
        redis_nodes=nodes,
        aurora_class=str(ctx.value(aurora[0]["Properties"]["DBInstanceClass"])) if aurora else "",
        aurora_instances=len(aurora),
        redshift_base_rpu=int(ctx.number(workgroups[0]["Properties"].get("BaseCapacity", 128), "BaseCapacity"))
        if workgroups
        else 0,
        interface_endpoint_azs=sum(len(e["Properties"].get("SubnetIds", [])) for e in endpoints),
        interface_endpoints=len(endpoints),
        alarms=count("AWS::CloudWatch::Alarm"),
        dashboards=count("AWS::CloudWatch::Dashboard"),
        kms_keys=count("AWS::KMS::Key"),
        secrets=secrets,
        staging_replicates=replication is not None,
        staging_replication_rtc=rtc,
    )


def _functions(template: dict[str, Any], ctx: _Context) -> tuple[FunctionSpec, ...]:
    mappings: dict[str, list[Trigger]] = {}
    for logical_id, m in _resources(template, "AWS::Lambda::EventSourceMapping"):
        if not ctx.deployed(m):
            continue
        props = m["Properties"]
        target = props.get("FunctionName", {})
        name = target.get("Ref") if isinstance(target, dict) else target
        mappings.setdefault(str(name), []).append(_stream_trigger(template, ctx, logical_id, props))
    found = []
    for name, fn in _resources(template, "AWS::Serverless::Function"):
        if not ctx.deployed(fn):
            continue
        props = fn["Properties"]
        triggers = list(mappings.get(name, []))
        for event_id, event in props.get("Events", {}).items():
            triggers += _event_trigger(template, ctx, f"{name}.{event_id}", event)
        env = function_environment(template, name)
        memory = int(
            ctx.number(
                props.get("MemorySize", template.get("Globals", {}).get("Function", {}).get("MemorySize", 128)),
                f"{name} MemorySize",
            )
        )
        reserved = ctx.value(props.get("ReservedConcurrentExecutions"))
        found.append(
            FunctionSpec(
                name=name,
                memory_mb=memory,
                reserved=int(ctx.number(reserved, f"{name} ReservedConcurrentExecutions"))
                if reserved is not None
                else None,
                roles=_roles(name, env, triggers),
                triggers=tuple(triggers),
            )
        )
    return tuple(found)


def _stream_trigger(template: dict[str, Any], ctx: _Context, logical_id: str, props: dict[str, Any]) -> Trigger:
    source = ctx.value(props.get("EventSourceArn"))
    if isinstance(source, dict) and "Fn::GetAtt" in source:
        target, attr = (
            source["Fn::GetAtt"] if isinstance(source["Fn::GetAtt"], list) else source["Fn::GetAtt"].split(".", 1)
        )
        kind_of = template["Resources"].get(target, {}).get("Type", "")
        kind = "kinesis" if kind_of == "AWS::Kinesis::Stream" else "dynamodb" if attr == "StreamArn" else ""
    else:
        kind = (
            "dynamodb"
            if str(source).startswith("arn:aws:dynamodb")
            else "kinesis"
            if ":kinesis:" in str(source)
            else ""
        )
    if not kind:
        raise PlanError(f"template.yaml: {logical_id}: cannot tell what stream {source!r} is")
    return Trigger(
        kind=kind,
        batch_size=int(ctx.number(props.get("BatchSize", 100), f"{logical_id} BatchSize")),
        window_s=ctx.number(props.get("MaximumBatchingWindowInSeconds", 0), f"{logical_id} window"),
        parallelization=int(ctx.number(props.get("ParallelizationFactor", 1), f"{logical_id} ParallelizationFactor")),
        patterns=_patterns(ctx, logical_id, props.get("FilterCriteria", {}).get("Filters", [])),
        source=logical_id,
    )


def _patterns(ctx: _Context, where: str, filters: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    out = []
    for f in filters:
        text = ctx.value(f.get("Pattern"))
        try:
            out.append(json.loads(text))
        except (TypeError, json.JSONDecodeError):
            raise PlanError(f"template.yaml: {where}: filter pattern is not JSON ({text!r})") from None
    return tuple(out)


def _event_trigger(template: dict[str, Any], ctx: _Context, where: str, event: dict[str, Any]) -> list[Trigger]:
    kind, props = event.get("Type"), event.get("Properties", {})
    if kind in ("HttpApi", "Api"):
        return [Trigger("http", source=where)]
    if kind == "Schedule":
        text = str(ctx.value(props.get("Schedule", "")))
        m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", text)
        if not m:
            raise PlanError(f"template.yaml: {where}: only rate(...) schedules are modelled, not {text!r}")
        minutes = int(m[1]) * {"m": 1, "h": 60, "d": 1440}[m[2][0]]
        return [Trigger("schedule", rate_minutes=float(minutes), source=where)]
    if kind in ("Kinesis", "DynamoDB"):
        mapped = dict(props, EventSourceArn=props.get("Stream"))
        return [_stream_trigger(template, ctx, where, mapped)]
    return []


def _roles(name: str, env: dict[str, Any], triggers: list[Trigger]) -> tuple[str, ...]:
    """What a function does, which picks its duration profile: by its triggers and the settings it reads."""
    kinds = {t.kind for t in triggers}
    roles = []
    if "kinesis" in kinds:
        roles.append("ingest")
    if "http" in kinds:
        roles.append("read-api")
    if "schedule" in kinds and "WORKGROUP_NAME" in env:
        roles.append("loader")
    if "dynamodb" in kinds:
        if "REDIS_HOST" in env:
            roles.append("cache")
        if "STAGING_BUCKET" in env:
            roles.append("stager")
        if not {"cache", "stager"} & set(roles):
            roles.append("repair" if "repair" in name.lower() else "stream")
    return tuple(roles) or ("other",)


# ----------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Invocations:
    """An event source mapping's steady state: invocations per second and records per invocation."""

    per_s: float
    records_each: float


def mapping_invocations(
    records_per_s: float, shards: int, kind: str, batch: int, window_s: float, record_bytes: float = 0.0
) -> Invocations:
    """Invocations of a stream mapping at ``records_per_s`` matching records spread over ``shards`` shards.

    With a batching window, Lambda waits up to the window (or a full batch) before invoking: each invocation
    carries ``clamp(rate_per_shard * window, 1, batch)`` records. Without one, each poll that finds records
    invokes with what arrived since the last poll: for Poisson arrivals at rate ``l`` per shard and ``p`` polls
    a second, ``p * (1 - exp(-l / p))`` invocations a second, and never fewer than ``l / batch``. A batch is
    also closed at ``PAYLOAD_BYTES`` of records of ``record_bytes`` (0: not counted).
    """
    if records_per_s <= 0:
        return Invocations(0.0, 0.0)
    if record_bytes > 0:
        batch = min(batch, max(1, int(PAYLOAD_BYTES // record_bytes)))
    per_shard = records_per_s / shards
    if window_s > 0:
        each = min(float(batch), max(1.0, per_shard * window_s))
        return Invocations(records_per_s / each, each)
    polls = POLLS_PER_S[kind]
    per_shard_invocations = max(polls * (1 - math.exp(-per_shard / polls)), per_shard / batch)
    per_s = per_shard_invocations * shards
    return Invocations(per_s, records_per_s / per_s)


def manifests_for(objects: float, object_bytes: float) -> int:
    """Manifests a load cycle writes for ``objects`` staged objects of one bucket (bounded by count and bytes)."""
    if objects <= 0:
        return 0
    return max(1, math.ceil(objects / MANIFEST_MAX_OBJECTS), math.ceil(objects * object_bytes / MANIFEST_MAX_BYTES))


def copy_files_for(objects: float, object_bytes: float) -> int:
    """COPY files a load cycle reads for ``objects`` staged objects of one bucket: each manifest's objects joined
    by the loader (``devicepipe.compaction``, default sizing)."""
    manifests = manifests_for(objects, object_bytes)
    if not manifests:
        return 0
    each = max(1, round(objects / manifests))
    return manifests * Sizing().file_count(int(each * object_bytes), each)


def cpu_scale(memory_mb: int) -> float:
    """How much slower than one full vCPU a function of this memory runs CPU-bound code."""
    return max(1.0, FULL_VCPU_MB / memory_mb)


def duration_ms(profile: Profile, records: float, memory_mb: int) -> float:
    return profile.fixed_ms + records * (profile.io_us + profile.cpu_us * cpu_scale(memory_mb)) / 1000


def item_sizes(reading_bytes: int) -> dict[str, int]:
    """Bytes of the table's items for a reading of ``reading_bytes`` bytes of JSON."""
    reading = reading_bytes + READING_ITEM_EXTRA_BYTES
    latest = reading_bytes + LATEST_ITEM_EXTRA_BYTES
    return {"reading": reading, "latest": latest, "gsi": latest}


def write_units(size_bytes: int) -> int:
    """Write request units of one standard write: one per KB (1,024 bytes), rounded up."""
    return max(1, math.ceil(size_bytes / 1024))


def read_units(size_bytes: float, eventually_consistent: bool = True) -> float:
    """Read request units of one read of ``size_bytes``: one per 4 KB, half that when eventually consistent."""
    units = max(1, math.ceil(size_bytes / 4096))
    return units / 2 if eventually_consistent else float(units)


def stream_record_kinds(fleet: Fleet, latest_per_s: float) -> list[tuple[dict[str, Any], float]]:
    """What each region's table stream carries, per second, as records Lambda filters see.

    Global tables put every write on every region's stream: each region's reading inserts and LATEST updates,
    and (steady state) one TTL expiry per reading.
    """
    kinds: list[tuple[dict[str, Any], float]] = []
    share = fleet.readings_per_s / len(fleet.regions)
    for origin in fleet.regions:
        image = {"origin_region": {"S": origin}}
        for event, sk, rate in (
            ("INSERT", "R#2026-01-01T00:00:00.000000Z#0", share),
            ("MODIFY", "LATEST", latest_per_s / len(fleet.regions)),
        ):
            record = {
                "eventName": event,
                "dynamodb": {"Keys": {"pk": {"S": "DEVICE#d"}, "sk": {"S": sk}}, "NewImage": image},
            }
            kinds.append((record, rate))
    expiry = {"eventName": "REMOVE", "dynamodb": {"Keys": {"pk": {"S": "DEVICE#d"}, "sk": {"S": "R#2026"}}}}
    kinds.append((expiry, fleet.readings_per_s))
    return kinds


def matching_rate(patterns: Iterable[dict[str, Any]], kinds: list[tuple[dict[str, Any], float]]) -> float:
    patterns = list(patterns)
    return sum(rate for record, rate in kinds if not patterns or any(matches(p, record) for p in patterns))


@dataclass
class CostLine:
    service: str
    region: str
    item: str
    quantity: float
    unit: str
    unit_usd: float
    usd: float
    price_region: str


@dataclass
class Plan:
    fleet: dict[str, Any]
    template: dict[str, Any]
    needs: dict[str, Any]
    lines: list[CostLine]
    warnings: list[str]
    assumptions: list[str]

    def by_service(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for line in self.lines:
            per_region = out.setdefault(line.service, {})
            per_region[line.region] = per_region.get(line.region, 0.0) + line.usd
        return out

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        services = self.by_service()
        return {
            "fleet": self.fleet,
            "template": self.template,
            "needs": self.needs,
            "monthly_usd": {
                "by_service": {s: {**r, "total": round(sum(r.values()), 2)} for s, r in services.items()},
                "total": round(self.total, 2),
                "lines": [asdict(line) for line in self.lines],
            },
            "seed": seed_comparison(self) if self.fleet["is_seed_fleet"] else None,
            "warnings": self.warnings,
            "assumptions": self.assumptions,
        }


class _Bill:
    def __init__(self, prices: Prices) -> None:
        self.prices = prices
        self.lines: list[CostLine] = []

    def add(self, service: str, region: str, item: str, quantity: float, unit: str, per: float = 1.0) -> None:
        """``quantity`` of ``unit``, priced at the table's ``item`` for ``region`` (a price per ``per`` units)."""
        unit_usd = self.prices.usd(item, region)
        fallback = (item, region) in self.prices.fallbacks
        price_region = self.prices.default_region if fallback else region
        self.lines.append(
            CostLine(service, region, item, quantity, unit, unit_usd, quantity / per * unit_usd, price_region)
        )


def plan(fleet: Fleet, template: dict[str, Any], prices: Prices) -> Plan:
    """The fleet's needs and monthly cost on this template at these prices (steady state).

    Each part of the bill adds its cost lines in turn (their order is the bill's) and returns what it needs.
    """
    settings = settings_from_template(template, fleet)
    _check_reading_bytes(fleet, settings)
    flow = _Flow(fleet, settings)
    bill = _Bill(prices)
    warnings: list[str] = []
    shards, kinesis = _kinesis(flow, bill, warnings)
    partitions, dynamodb = _dynamodb(flow, bill)
    needs = {
        "kinesis": kinesis,
        "dynamodb": dynamodb,
        "lambda": _lambda(flow, {"kinesis": shards, "dynamodb": partitions}, bill, warnings),
        "staging": _staging(flow, partitions, bill),
        "redis": _redis(flow, prices, bill, warnings),
        "aurora": _aurora(flow, bill),
        "redshift": _redshift(flow, bill),
    }
    _network_and_operations(flow, bill)
    if prices.fallbacks:
        missing = sorted({f"{item} ({region})" for item, region in prices.fallbacks})
        warnings.append(
            f"priced at {prices.default_region} rates, for want of a line in prices.toml: " + ", ".join(missing)
        )
    return Plan(_fleet_doc(fleet), _template_doc(settings), needs, bill.lines, warnings, assumptions(fleet))


def _check_reading_bytes(fleet: Fleet, settings: Settings) -> None:
    if fleet.reading_bytes > settings.max_reading_bytes:
        raise PlanError(
            f"--reading-bytes {fleet.reading_bytes} is above the ingest's MAX_READING_BYTES "
            f"({settings.max_reading_bytes}): such readings are quarantined"
        )


@dataclass(frozen=True)
class _Flow:
    """The fleet's rates that more than one part of the bill reads, on the template's settings."""

    fleet: Fleet
    settings: Settings

    @property
    def n_regions(self) -> int:
        return len(self.fleet.regions)

    @property
    def per_region_in(self) -> float:
        """Readings a second arriving in each region."""
        return self.fleet.readings_per_s / self.n_regions

    @property
    def latest_per_s(self) -> float:
        """LATEST item writes a second: one per device per batch (batches ~1 s apart)."""
        return min(self.fleet.readings_per_s, float(self.fleet.devices))

    @cached_property
    def kinds(self) -> list[tuple[dict[str, Any], float]]:
        return stream_record_kinds(self.fleet, self.latest_per_s)

    @property
    def reads_per_region(self) -> float:
        return self.fleet.reads_per_s / self.n_regions

    @property
    def misses(self) -> float:
        return 1 - self.fleet.cache_hit_ratio

    @property
    def cycles_per_month(self) -> float:
        """Warehouse load cycles a month (0: the template schedules no load)."""
        interval = self.settings.load_interval_minutes
        return (HOURS_PER_MONTH * 60 / interval) if interval else 0.0

    @property
    def rows_per_cycle(self) -> float:
        return self.fleet.readings_per_s * self.settings.load_interval_minutes * 60

    @property
    def load_s(self) -> float:
        """Billed seconds of one load cycle."""
        if not self.cycles_per_month:
            return 0.0
        return max(REDSHIFT_MIN_BILLED_S, LOAD_FIXED_S + self.rows_per_cycle / LOAD_ROWS_PER_S)

    @property
    def stream_record_bytes(self) -> int:
        # Lambda's table stream events only: a Kinesis batch (ingest) is far from 6 MB at its BatchSize.
        return self.fleet.reading_bytes + STREAM_RECORD_EXTRA_BYTES

    @property
    def staged_row_bytes(self) -> int:
        return self.fleet.reading_bytes + STAGED_ROW_EXTRA_BYTES


def _kinesis(flow: _Flow, bill: _Bill, warnings: list[str]) -> tuple[int, dict[str, Any]]:
    """Shards per region (the template's, or more where the load needs them) and their cost."""
    fleet, per_region_in = flow.fleet, flow.per_region_in
    record_bytes = fleet.reading_bytes + PARTITION_KEY_BYTES
    bytes_per_s = per_region_in * record_bytes
    load = max(per_region_in / KINESIS_RECORDS_PER_SHARD, bytes_per_s / KINESIS_BYTES_PER_SHARD)
    shards_needed = max(1, math.ceil(load * fleet.headroom - 1e-9))
    template_shards = flow.settings.regions[0].kinesis_shards
    shards = max(template_shards, shards_needed)
    payload_units = per_region_in * math.ceil(record_bytes / PUT_PAYLOAD_UNIT_BYTES) * SECONDS_PER_MONTH
    needs = {
        "records_per_s_per_region": per_region_in,
        "mb_per_s_per_region": bytes_per_s / MIB,
        "shard_load": load,
        "shards_needed": shards_needed,
        "template_shards": template_shards,
        "shards_costed": shards,
        "utilisation_of_template_shards": load / template_shards,
        "put_payload_units_per_month_per_region": payload_units,
    }
    if shards_needed > template_shards:
        warnings.append(
            f"Kinesis: {shards_needed} shards needed per region (load {load:.2f} shards x headroom {fleet.headroom:g}) "
            f"but the template provisions {template_shards}: raise ShardCount (costed at {shards_needed})"
        )
    for region in fleet.regions:
        bill.add("Kinesis", region, "kinesis.shard_hour", shards * HOURS_PER_MONTH, "shard-hours")
        bill.add("Kinesis", region, "kinesis.put_payload_million", payload_units, "PUT payload units", per=1e6)
    return shards, needs


def _dynamodb(flow: _Flow, bill: _Bill) -> tuple[int, dict[str, Any]]:
    """Each region's table: write and read units, storage, replication; returns its stream's shards too."""
    fleet, settings, n_regions = flow.fleet, flow.settings, flow.n_regions
    r, latest_per_s = fleet.readings_per_s, flow.latest_per_s
    sizes = item_sizes(fleet.reading_bytes)
    wru = {k: write_units(v) for k, v in sizes.items()}
    # Every table write is a replicated write unit in every replica region (the origin included); a GSI whose
    # key changes costs a delete and a put in each region's index; a TTL delete is free where it happens and a
    # replicated write everywhere else (global-tables billing and throughput-planning guides).
    table_units_per_s = r * wru["reading"] + latest_per_s * wru["latest"]
    gsi_units_per_s = latest_per_s * 2 * wru["gsi"] * settings.gsis
    ttl_units_per_s = r * wru["reading"] * (n_regions - 1) / n_regions
    storage_gb = _table_storage_gb(fleet, settings, sizes)
    rru_per_s = _read_units_per_s(flow, sizes)
    partitions = max(
        1,
        math.ceil(storage_gb / PARTITION_GB),
        math.ceil((table_units_per_s + gsi_units_per_s) * fleet.headroom / PARTITION_WRITE_UNITS),
    )
    replicated_gb = (flow.per_region_in * sizes["reading"] + latest_per_s / n_regions * sizes["latest"]) * (
        n_regions - 1
    )
    replicated_gb *= SECONDS_PER_MONTH / GIB
    needs = {
        "item_bytes": sizes,
        "write_units_per_reading": {
            "reading": wru["reading"],
            "latest": wru["latest"],
            "gsi": 2 * wru["gsi"] * settings.gsis,
        },
        "replicated_write_units_per_s_per_region": table_units_per_s,
        "gsi_write_units_per_s_per_region": gsi_units_per_s,
        "ttl_replicated_deletes_per_s_per_region": ttl_units_per_s,
        "read_units_per_s_per_region": rru_per_s,
        "storage_gb_per_region": storage_gb,
        "stream_shards_assumed": partitions,
        "replicated_gb_out_per_month_per_region": replicated_gb,
    }
    # A single-region table's writes are standard ones, and nothing leaves the region.
    replicated = n_regions > 1
    table_writes = (table_units_per_s + ttl_units_per_s) if replicated else table_units_per_s
    table_item = "dynamodb.replicated_write_request_million" if replicated else "dynamodb.write_request_million"
    for region in fleet.regions:
        bill.add("DynamoDB", region, table_item, table_writes * SECONDS_PER_MONTH, "write units (table)", per=1e6)
        gsi_writes = gsi_units_per_s * SECONDS_PER_MONTH
        bill.add("DynamoDB", region, "dynamodb.write_request_million", gsi_writes, "write units (GSI)", per=1e6)
        reads = rru_per_s * SECONDS_PER_MONTH
        bill.add("DynamoDB", region, "dynamodb.read_request_million", reads, "read units", per=1e6)
        bill.add("DynamoDB", region, "dynamodb.storage_gb_month", storage_gb, "GB-months")
        if settings.pitr:
            bill.add("DynamoDB", region, "dynamodb.pitr_gb_month", storage_gb, "GB-months (PITR)")
        if replicated:
            bill.add("Data transfer", region, "transfer.inter_region_gb", replicated_gb, "GB replicated out")
    return partitions, needs


def _table_storage_gb(fleet: Fleet, settings: Settings, sizes: dict[str, int]) -> float:
    """A region's table and index storage: readings kept until TTL (and its lag) deletes them, one LATEST each."""
    stored_readings = fleet.readings_per_s * 86400 * (settings.reading_ttl_days + TTL_LAG_DAYS)
    table_bytes = stored_readings * (sizes["reading"] + DDB_ITEM_STORAGE_OVERHEAD) + fleet.devices * (
        sizes["latest"] + DDB_ITEM_STORAGE_OVERHEAD
    )
    index_bytes = fleet.devices * (sizes["gsi"] + DDB_ITEM_STORAGE_OVERHEAD) * settings.gsis
    return (table_bytes + index_bytes) / GIB


def _read_units_per_s(flow: _Flow, sizes: dict[str, int]) -> float:
    """Read units a second in each region: the read API's cache misses, in the mix of READ_MIX."""
    fleet = flow.fleet
    devices_per_branch = fleet.devices / fleet.branches
    rru_per_request = {
        "latest": read_units(sizes["latest"]),
        "branch": read_units(devices_per_branch * sizes["gsi"]),
        "branches": read_units(fleet.devices * sizes["gsi"]),
    }
    return flow.reads_per_region * flow.misses * sum(READ_MIX[k] * rru_per_request[k] for k in READ_MIX)


def _lambda(flow: _Flow, stream_shards: dict[str, int], bill: _Bill, warnings: list[str]) -> dict[str, Any]:
    """Each invoked function's figures by name and region, and its requests, GB-seconds and logs' cost."""
    functions: dict[str, Any] = {}
    for rs in flow.settings.regions:
        for fn in rs.functions:
            figures = _function_figures(flow, fn, stream_shards, warnings)
            if figures is None:
                continue
            functions.setdefault(fn.name, {})[rs.region] = figures
            concurrency = figures["average_concurrency"]
            if fn.reserved is not None and concurrency * flow.fleet.headroom > fn.reserved:
                warnings.append(
                    f"{fn.name} ({rs.region}): average concurrency {concurrency:.1f} x headroom "
                    f"{flow.fleet.headroom:g} exceeds its reserved concurrency {fn.reserved}"
                )
            invocations = figures["invocations_per_month"]
            bill.add("Lambda", rs.region, "lambda.requests_million", invocations, f"{fn.name} requests", per=1e6)
            bill.add(
                "Lambda", rs.region, "lambda.gb_second_arm", figures["gb_seconds_per_month"], f"{fn.name} GB-seconds"
            )
            log_gb = invocations * LOG_BYTES_PER_INVOCATION / GIB
            bill.add("CloudWatch", rs.region, "cloudwatch.logs_ingested_gb", log_gb, f"{fn.name} log GB")
    return functions


def _function_figures(
    flow: _Flow, fn: FunctionSpec, stream_shards: dict[str, int], warnings: list[str]
) -> dict[str, Any] | None:
    """One function's invocations and billed duration in a region, over all its triggers (None: never invoked)."""
    inv_per_s, records, busy_ms = 0.0, 0.0, 0.0
    for t in fn.triggers:
        triggered = _trigger_invocations(flow, fn, t, stream_shards, warnings)
        if triggered is None:  # pragma: no cover - kinds are closed
            continue
        inv, ms = triggered
        inv_per_s += inv.per_s
        records = inv.records_each
        busy_ms += inv.per_s * math.ceil(ms)
    if inv_per_s == 0:
        return None
    billed_ms = busy_ms / inv_per_s
    invocations = inv_per_s * SECONDS_PER_MONTH
    return {
        "roles": list(fn.roles),
        "memory_mb": fn.memory_mb,
        "invocations_per_month": invocations,
        "records_per_invocation": records,
        "billed_ms_per_invocation": billed_ms,
        "gb_seconds_per_month": invocations * billed_ms / 1000 * fn.memory_mb / 1024,
        "average_concurrency": inv_per_s * billed_ms / 1000,
        "reserved_concurrency": fn.reserved,
    }


def _trigger_invocations(
    flow: _Flow, fn: FunctionSpec, t: Trigger, stream_shards: dict[str, int], warnings: list[str]
) -> tuple[Invocations, float] | None:
    """How often ``t`` invokes ``fn`` and how long each invocation runs (ms), by the trigger's kind."""
    if t.kind in ("kinesis", "dynamodb"):
        rate = flow.per_region_in if t.kind == "kinesis" else matching_rate(t.patterns, flow.kinds)
        event_bytes = flow.stream_record_bytes if t.kind == "dynamodb" else 0.0
        shard_count = stream_shards[t.kind] * t.parallelization
        inv = mapping_invocations(rate, shard_count, t.kind, t.batch_size, t.window_s, event_bytes)
        return inv, duration_ms(_profile(fn, warnings), inv.records_each, fn.memory_mb)
    if t.kind == "http":
        return Invocations(flow.reads_per_region, 1.0), _read_ms(flow.fleet, fn.memory_mb)
    if t.kind == "schedule":
        ms = flow.load_s * 1000 + 2000 if "loader" in fn.roles else 1000.0
        return Invocations(1 / (t.rate_minutes * 60), 0.0), ms
    return None


def _read_ms(fleet: Fleet, memory_mb: int) -> float:
    """One read API request: cache hits cost CPU only, misses wait on the table too."""
    misses = 1 - fleet.cache_hit_ratio
    return (
        READ_FIXED_MS
        + misses * READ_MISS_WAIT_MS
        + (fleet.cache_hit_ratio * READ_HIT_CPU_US + misses * READ_MISS_CPU_US) * cpu_scale(memory_mb) / 1000
    )


def _staged_objects_per_s(flow: _Flow, partitions: int) -> float:
    """Objects a region stages a second: one per stager invocation that holds own-region readings.

    The stager's own filter passes nothing else; a function that also gets other records stages only these.
    """
    per_s = 0.0
    own_stream_triggers = (
        (rs.region, t)
        for rs in flow.settings.regions
        for fn in rs.functions
        if "stager" in fn.roles
        for t in fn.triggers
        if t.kind == "dynamodb"
    )
    for region, t in own_stream_triggers:  # every region's stager is alike: the last one stands for all
        own = [(rec, rate) for rec, rate in flow.kinds if _own_insert(rec, region)]
        staged = mapping_invocations(
            matching_rate(t.patterns, own), partitions, t.kind, t.batch_size, t.window_s, flow.stream_record_bytes
        )
        per_s = staged.per_s
    return per_s


@dataclass(frozen=True)
class _Staging:
    """S3 staging and the warehouse load, from the objects each region stages.

    Each region stages its own readings. A region whose bucket replicates into the primary's (the warehouse
    region) is read there; otherwise the loader lists and COPYs each region's bucket where it is.
    """

    flow: _Flow
    objects_per_s: float  # staged objects a second, each region
    replicating: list[str]  # regions whose bucket replicates into the primary's
    held: dict[str, int]  # how many regions' objects each bucket holds
    loaded: dict[str, int]  # the buckets the loader reads, and how many regions' objects each holds

    @property
    def bytes_per_s(self) -> float:
        if not self.objects_per_s:
            return 0.0
        return self.flow.per_region_in * self.flow.staged_row_bytes * STAGED_GZIP_RATIO

    @property
    def objects_month(self) -> float:
        return self.objects_per_s * SECONDS_PER_MONTH

    @property
    def gb_month(self) -> float:
        return self.bytes_per_s * SECONDS_PER_MONTH / GIB

    @property
    def retained_objects(self) -> float:
        return self.objects_per_s * 86400 * self.flow.settings.staging_retention_days

    @property
    def retained_gb(self) -> float:
        return self.bytes_per_s * 86400 * self.flow.settings.staging_retention_days / GIB

    @property
    def objects_per_cycle(self) -> float:
        return self.objects_per_s * self.flow.settings.load_interval_minutes * 60

    @property
    def object_bytes(self) -> float:
        return self.bytes_per_s / self.objects_per_s if self.objects_per_s else 0.0

    def per_cycle(self, count: Callable[[float, float], int]) -> int:
        """``count(objects, object_bytes)`` summed over the buckets a load cycle reads (0: no load schedule)."""
        if not self.flow.cycles_per_month:
            return 0
        return sum(count(self.objects_per_cycle * share, self.object_bytes) for share in self.loaded.values())

    @property
    def lists_per_cycle(self) -> dict[str, int]:
        """A cycle lists each origin from its watermark, which stays ``LATE_ARRIVAL_S`` behind the newest hour
        (``devicepipe.loader``): that window's keys, one quarantine listing an origin, one listing of the origins."""
        window_s = LATE_ARRIVAL_S + 3600 + self.flow.settings.load_interval_minutes * 60
        per_origin = math.ceil(self.objects_per_s * window_s / S3_LIST_PAGE) + 1
        return {region: per_origin * share + 1 for region, share in self.loaded.items()}

    def add_to(self, bill: _Bill) -> dict[str, Any]:
        """Adds each region's staging cost; returns the staging needs."""
        manifests_per_cycle = self.per_cycle(manifests_for)
        copy_files_per_cycle = self.per_cycle(copy_files_for)
        lists_per_cycle = self.lists_per_cycle
        needs = {
            "objects_per_month_per_region": self.objects_month,
            "rows_per_object": self.flow.per_region_in / self.objects_per_s if self.objects_per_s else 0.0,
            "object_kb": self.object_bytes / 1024,
            "gb_per_month_per_region": self.gb_month,
            "retained_objects_per_region": self.retained_objects,
            "retained_gb_per_region": self.retained_gb,
            "replicated_to_primary_from": self.replicating,
            "load_cycles_per_month": self.flow.cycles_per_month,
            "objects_per_cycle": self.objects_per_cycle * sum(self.loaded.values()),
            "manifests_per_cycle": manifests_per_cycle,
            "list_requests_per_cycle": sum(lists_per_cycle.values()),
            "copy_files_per_cycle": copy_files_per_cycle,
        }
        copy_files = copy_files_per_cycle * self.flow.cycles_per_month
        for rs in self.flow.settings.regions:
            manifest_calls = manifests_per_cycle * self.flow.cycles_per_month if rs.primary else 0.0
            self._bill_requests(bill, rs.region, manifest_calls, lists_per_cycle, copy_files if rs.primary else 0.0)
            self._bill_storage_and_transfer(bill, rs)
        return needs

    def _bill_requests(
        self, bill: _Bill, region: str, manifest_calls: float, lists_per_cycle: dict[str, int], copy_files: float
    ) -> None:
        replica_objects = self.objects_month * (self.held[region] - 1)
        bill.add("S3 staging", region, "s3.put_thousand", self.objects_month, "PUT requests (staged objects)", per=1000)
        if replica_objects:
            bill.add("S3 staging", region, "s3.put_thousand", replica_objects, "PUT requests (replicas)", per=1000)
        if manifest_calls:
            puts = 2 * manifest_calls  # each manifest and its ledger file
            bill.add("S3 staging", region, "s3.put_thousand", puts, "PUT requests (manifests)", per=1000)
        if region in lists_per_cycle:
            calls = lists_per_cycle[region] * self.flow.cycles_per_month
            bill.add("S3 staging", region, "s3.put_thousand", calls, "LIST requests (loader)", per=1000)
            # The loader reads every staged object to join it (devicepipe.compaction) and writes the joined files;
            # COPY reads those, the manifest and its ledger file.
            staged = self.objects_month * self.loaded[region]
            bill.add("S3 staging", region, "s3.get_thousand", staged, "GET requests (loader joining)", per=1000)
            if copy_files:
                bill.add("S3 staging", region, "s3.put_thousand", copy_files, "PUT requests (joined files)", per=1000)
            gets = copy_files + 2 * manifest_calls
            bill.add("S3 staging", region, "s3.get_thousand", gets, "GET requests (COPY)", per=1000)

    def _bill_storage_and_transfer(self, bill: _Bill, rs: RegionSettings) -> None:
        region, gb_month = rs.region, self.gb_month
        bill.add("S3 staging", region, "s3.storage_gb_month", self.retained_gb * self.held[region], "GB-months")
        if region in self.replicating:
            bill.add("Data transfer", region, "transfer.inter_region_gb", gb_month, "GB staged, replicated")
            if rs.staging_replication_rtc:
                bill.add("S3 staging", region, "s3.replication_time_control_gb", gb_month, "GB replicated (RTC)")
        elif not rs.primary:
            bill.add("Data transfer", region, "transfer.inter_region_gb", gb_month, "GB staged, COPY across regions")


def _staging(flow: _Flow, partitions: int, bill: _Bill) -> dict[str, Any]:
    regions = flow.settings.regions
    replicating = [rs.region for rs in regions if rs.staging_replicates and not rs.primary]
    held = {rs.region: (1 + len(replicating) if rs.primary else 1) for rs in regions}
    loaded = {rs.region: held[rs.region] for rs in regions if rs.region not in replicating}
    return _Staging(flow, _staged_objects_per_s(flow, partitions), replicating, held, loaded).add_to(bill)


def _redis(flow: _Flow, prices: Prices, bill: _Bill, warnings: list[str]) -> dict[str, Any]:
    """The cache's memory against the primary's node type, and each region's nodes."""
    fleet = flow.fleet
    redis_bytes = REDIS_BASELINE_BYTES + fleet.devices * (fleet.reading_bytes + REDIS_DEVICE_EXTRA_BYTES)
    primary_rs = flow.settings.primary
    node_gib = prices.nodes_gib.get(primary_rs.redis_node_type)
    if node_gib is None:
        raise PlanError(f"prices.toml has no memory size for {primary_rs.redis_node_type} (add it under [nodes])")
    usable = node_gib * GIB * (1 - REDIS_RESERVED_SHARE)
    if redis_bytes * fleet.headroom > usable:
        warnings.append(
            f"Redis: {redis_bytes / MIB:,.0f} MB x headroom {fleet.headroom:g} does not fit a "
            f"{primary_rs.redis_node_type} ({usable / MIB:,.0f} MB usable): pick a larger RedisNodeType"
        )
    for rs in flow.settings.regions:
        item = f"elasticache.node_hour.{rs.redis_node_type}"
        bill.add("ElastiCache Redis", rs.region, item, rs.redis_nodes * HOURS_PER_MONTH, "node-hours")
    return {
        "node_type": primary_rs.redis_node_type,
        "nodes_per_region": primary_rs.redis_nodes,
        "memory_mb": redis_bytes / MIB,
        "node_usable_mb": usable / MIB,
        "utilisation": redis_bytes / usable,
    }


def _aurora(flow: _Flow, bill: _Bill) -> dict[str, Any]:
    """The registry database: instances where the template deploys them, and storage sized by the fleet."""
    aurora_gb = max(AURORA_MIN_STORAGE_GB, flow.fleet.devices * AURORA_BYTES_PER_DEVICE / GIB)
    for rs in flow.settings.regions:
        if rs.aurora_instances:
            item = f"aurora.instance_hour.{rs.aurora_class}"
            hours = rs.aurora_instances * HOURS_PER_MONTH
            bill.add("Aurora PostgreSQL", rs.region, item, hours, "instance-hours")
            bill.add("Aurora PostgreSQL", rs.region, "aurora.storage_gb_month", aurora_gb, "GB-months")
    primary_rs = flow.settings.primary
    return {
        "instance_class": primary_rs.aurora_class,
        "instances_per_region": primary_rs.aurora_instances,
        "storage_gb": aurora_gb,
    }


def _redshift(flow: _Flow, bill: _Bill) -> dict[str, Any]:
    """The warehouse: RPU-hours of the load cycles and WAREHOUSE_MONTHS of loaded readings."""
    settings = flow.settings
    readings_month = flow.fleet.readings_per_s * SECONDS_PER_MONTH
    warehouse_gb_month = readings_month * flow.staged_row_bytes * STAGED_GZIP_RATIO / GIB
    rpu = _base_rpu(settings)
    rpu_hours = flow.cycles_per_month * rpu * flow.load_s / 3600
    for rs in settings.regions:
        if rs.redshift_base_rpu:
            storage_gb = warehouse_gb_month * WAREHOUSE_MONTHS
            bill.add("Redshift Serverless", rs.region, "redshift.rpu_hour", rpu_hours, "RPU-hours")
            bill.add("Redshift Serverless", rs.region, "redshift.storage_gb_month", storage_gb, "GB-months")
    return {
        "base_rpu": rpu,
        "load_interval_minutes": settings.load_interval_minutes,
        "rows_per_cycle": flow.rows_per_cycle,
        "billed_seconds_per_cycle": flow.load_s,
        "rpu_hours_per_month": rpu_hours,
        "storage_gb_added_per_month": warehouse_gb_month,
        "storage_gb_costed": warehouse_gb_month * WAREHOUSE_MONTHS,
    }


def _base_rpu(settings: Settings) -> int:
    return next((rs.redshift_base_rpu for rs in settings.regions if rs.redshift_base_rpu), 0)


def _network_and_operations(flow: _Flow, bill: _Bill) -> None:
    """Per region: interface endpoints, the read API's requests, alarms, dashboards, keys and secrets."""
    api_requests = flow.reads_per_region * SECONDS_PER_MONTH
    for rs in flow.settings.regions:
        endpoint_hours = rs.interface_endpoint_azs * HOURS_PER_MONTH
        bill.add(
            "VPC interface endpoints", rs.region, "vpc.interface_endpoint_az_hour", endpoint_hours, "endpoint-AZ-hours"
        )
        bill.add(
            "API Gateway HTTP API", rs.region, "apigateway.http_requests_million", api_requests, "requests", per=1e6
        )
        bill.add("CloudWatch", rs.region, "cloudwatch.alarm_month", rs.alarms, "alarms")
        bill.add("CloudWatch", rs.region, "cloudwatch.dashboard_month", rs.dashboards, "dashboards")
        bill.add("KMS and Secrets Manager", rs.region, "kms.key_month", rs.kms_keys, "keys")
        bill.add("KMS and Secrets Manager", rs.region, "secretsmanager.secret_month", rs.secrets, "secrets")


def _fleet_doc(fleet: Fleet) -> dict[str, Any]:
    return {
        **asdict(fleet),
        "primary": fleet.primary,
        "readings_per_s": fleet.readings_per_s,
        "readings_per_month": fleet.readings_per_s * SECONDS_PER_MONTH,
        "is_seed_fleet": _is_seed(fleet),
    }


def _template_doc(settings: Settings) -> dict[str, Any]:
    """The template's settings the plan used, the primary region's."""
    primary_rs = settings.primary
    return {
        "kinesis_shards": settings.regions[0].kinesis_shards,
        "reading_ttl_days": settings.reading_ttl_days,
        "staging_retention_days": settings.staging_retention_days,
        "load_interval_minutes": settings.load_interval_minutes,
        "redis_node_type": primary_rs.redis_node_type,
        "aurora_instance_class": primary_rs.aurora_class,
        "redshift_base_rpu": _base_rpu(settings),
        "functions": {
            fn.name: {
                "memory_mb": fn.memory_mb,
                "roles": list(fn.roles),
                "triggers": [
                    {k: v for k, v in asdict(t).items() if k != "patterns" and v not in (0, 0.0, "", ())}
                    for t in fn.triggers
                ],
            }
            for fn in primary_rs.functions
        },
    }


def _own_insert(record: dict[str, Any], region: str) -> bool:
    image = record["dynamodb"].get("NewImage", {})
    return bool(record["eventName"] == "INSERT" and image.get("origin_region", {}).get("S") == region)


def _profile(fn: FunctionSpec, warnings: list[str]) -> Profile:
    stream_roles = [role for role in fn.roles if role in PROFILES]
    if not stream_roles:
        return PROFILES["stream"]
    if stream_roles == ["stream"]:
        note = f"{fn.name}: no benchmark figure, duration assumed ({PROFILES['stream'].basis})"
        if note not in warnings:
            warnings.append(note)
    picked = [PROFILES[role] for role in stream_roles]
    return Profile(
        sum(p.fixed_ms for p in picked),
        sum(p.cpu_us for p in picked),
        sum(p.io_us for p in picked),
        "; ".join(p.basis for p in picked),
    )


def _is_seed(fleet: Fleet) -> bool:
    return (
        fleet.devices == SEED_FLEET["devices"]
        and fleet.interval_s == SEED_FLEET["interval_s"]
        and fleet.branches == SEED_FLEET["branches"]
    )


def assumptions(fleet: Fleet) -> list[str]:
    """The modelling assumptions, in words, as the output lists them (docs/plan.md explains each)."""
    return [
        "steady state over AWS's 730-hour month; readings spread evenly over time, devices and regions "
        f"({fleet.readings_per_s / len(fleet.regions):,.1f} readings/s ingested in each region)",
        f"capacity is sized at {fleet.headroom:g}x the average load (--headroom)",
        f"read API: {fleet.reads_per_s:g} requests/s over all regions (--reads-per-second), "
        f"{fleet.cache_hit_ratio:.0%} cache hits (--cache-hit-ratio), "
        "mix 70% latest / 25% branch listings / 5% branch list",
        "Lambda durations from make bench through real boto3 clients (docs/benchmarks.md; one core taken as one "
        "vCPU; scaled by 1,769 MB / MemorySize)",
        f"DynamoDB items: reading JSON + {READING_ITEM_EXTRA_BYTES} B, LATEST + {LATEST_ITEM_EXTRA_BYTES} B; "
        f"TTL deletes lag {TTL_LAG_DAYS} days; "
        f"one stream shard per ~{PARTITION_GB} GB or {PARTITION_WRITE_UNITS} write units/s",
        f"staged rows: reading + {STAGED_ROW_EXTRA_BYTES} B, gzip to {STAGED_GZIP_RATIO:.0%}; "
        f"warehouse storage costed after {WAREHOUSE_MONTHS} months of history",
        f"Redshift Serverless: each load cycle bills max({REDSHIFT_MIN_BILLED_S:g} s, {LOAD_FIXED_S:g} s + rows / "
        f"{LOAD_ROWS_PER_S:,}/s) at the base capacity",
        f"Redis: reading + {REDIS_DEVICE_EXTRA_BYTES} B per device (measured), "
        f"{REDIS_RESERVED_SHARE:.0%} of node memory reserved",
        "not costed: free tiers, X-Ray traces, CloudWatch custom metrics and log storage, SQS/SNS, KMS requests, "
        "Aurora I/O and backups, quarantine bucket, data transfer to branches",
        "prices: devicepipe_tools/prices.toml, recorded from stored copies of public pages; check them before use",
    ]


# ----------------------------------------------------------------------------------------------- rendering
def seed_comparison(result: Plan) -> dict[str, Any]:
    """Per service: this plan's monthly figure beside the seed's own estimate."""
    ours = {s: sum(r.values()) for s, r in result.by_service().items()}
    rows = {s: {"plan": round(v, 2), "seed": SEED_COSTS.get(s)} for s, v in ours.items()}
    return {"rows": rows, "plan_total": round(result.total, 2), "seed_total": SEED_TOTAL}


def _money(v: float) -> str:
    return f"{v:,.2f}"


def _qty(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.2f} M"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.3g}"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def render(result: Plan, detail: bool = False) -> str:
    """The plan for people: needs, cost per service and region, the seed's table, warnings, assumptions."""
    f, n = result.fleet, result.needs
    regions = list(f["regions"])
    out = [
        f"devicepipe plan: {f['devices']:,} devices every {f['interval_s']:g} s in {f['branches']:,} branches; "
        f"regions {', '.join(regions)} (primary {f['primary']}); readings {f['reading_bytes']:,} B",
        f"  {f['readings_per_s']:,.1f} readings/s, {f['readings_per_month'] / 1e6:,.1f} M readings a month (730 h)",
        "",
        "What the fleet needs (per region unless said)",
    ]
    k, d, s, rd, rs = n["kinesis"], n["dynamodb"], n["staging"], n["redis"], n["redshift"]
    needs_rows = [
        ["Kinesis", "records/s in", _qty(k["records_per_s_per_region"]), f"limit {KINESIS_RECORDS_PER_SHARD:,}/shard"],
        ["", "MB/s in", f"{k['mb_per_s_per_region']:.3f}", "limit 1 MiB/s/shard"],
        [
            "",
            "shards needed (with headroom)",
            f"{k['shards_needed']:,}",
            f"template {k['template_shards']} ({k['utilisation_of_template_shards']:.1%} used)",
        ],
        ["", "PUT payload units/month", _qty(k["put_payload_units_per_month_per_region"]), ""],
        ["DynamoDB", "item bytes reading/LATEST", f"{d['item_bytes']['reading']}/{d['item_bytes']['latest']}", ""],
        [
            "",
            "replicated write units/s",
            _qty(d["replicated_write_units_per_s_per_region"]),
            "every region pays every write",
        ],
        ["", "GSI write units/s", _qty(d["gsi_write_units_per_s_per_region"]), "LATEST key moves: delete + put"],
        ["", "TTL replicated deletes/s", _qty(d["ttl_replicated_deletes_per_s_per_region"]), ""],
        ["", "read units/s (read API misses)", _qty(d["read_units_per_s_per_region"]), ""],
        [
            "",
            "storage GB (TTL, + index)",
            _qty(d["storage_gb_per_region"]),
            f"{result.template['reading_ttl_days']} days + {TTL_LAG_DAYS} days' TTL lag",
        ],
        ["", "stream shards (assumed)", f"{d['stream_shards_assumed']:,}", "Lambda's stream reads are free"],
        [
            "S3 staging",
            "objects/month",
            _qty(s["objects_per_month_per_region"]),
            f"{s['rows_per_object']:,.1f} rows, {s['object_kb']:,.1f} KB each",
        ],
        [
            "",
            "retained objects / GB",
            f"{_qty(s['retained_objects_per_region'])} / {_qty(s['retained_gb_per_region'])}",
            f"{result.template['staging_retention_days']}-day lifecycle",
        ],
        [
            "",
            "COPY cadence",
            f"every {rs['load_interval_minutes']:g} min",
            f"{_qty(s['objects_per_cycle'])} objects joined into {s['copy_files_per_cycle']:,} COPY file(s), "
            f"{s['manifests_per_cycle']:,} manifest(s), {s['list_requests_per_cycle']:,} LISTs a cycle (all buckets)",
        ],
        [
            "Redis",
            "memory MB",
            _qty(rd["memory_mb"]),
            f"{rd['node_type']}: {rd['node_usable_mb']:,.0f} MB usable ({rd['utilisation']:.1%})",
        ],
        [
            "Aurora",
            "instances",
            f"{n['aurora']['instances_per_region']} x {n['aurora']['instance_class']}",
            "registry storage ~1 GB",
        ],
        [
            "Redshift",
            "RPU-hours/month",
            _qty(rs["rpu_hours_per_month"]),
            f"{rs['base_rpu']} RPU x {rs['billed_seconds_per_cycle']:.0f} s "
            f"x {_qty(n['staging']['load_cycles_per_month'])} cycles",
        ],
        [
            "",
            "storage GB added/month",
            _qty(rs["storage_gb_added_per_month"]),
            f"costed at {WAREHOUSE_MONTHS} months: {_qty(rs['storage_gb_costed'])} GB",
        ],
    ]
    out += _table(["service", "figure", "value", "note"], needs_rows, "llrl")
    out += ["", "Lambda (per region)"]
    lam_rows = []
    for name, per_region in n["lambda"].items():
        for region, x in per_region.items():
            lam_rows.append(
                [
                    name,
                    region,
                    f"{x['memory_mb']}",
                    _qty(x["invocations_per_month"]),
                    f"{x['records_per_invocation']:,.1f}",
                    f"{x['billed_ms_per_invocation']:,.0f}",
                    _qty(x["gb_seconds_per_month"]),
                    f"{x['average_concurrency']:.2f}",
                ]
            )
    out += _table(
        ["function", "region", "MB", "invocations/mo", "records/inv", "ms/inv", "GB-s/mo", "concurrency"],
        lam_rows,
        "llrrrrrr",
    )

    services = result.by_service()
    out += ["", "Monthly cost, USD (prices: devicepipe_tools/prices.toml - check them before use)"]
    seed = f["is_seed_fleet"]
    header = ["service", *regions, "total"] + (["seed's table"] if seed else [])
    rows = []
    for service, per_region in services.items():
        row = [service, *(_money(per_region.get(reg, 0.0)) for reg in regions), _money(sum(per_region.values()))]
        if seed:
            row.append(_money(SEED_COSTS[service]) if service in SEED_COSTS else "-")
        rows.append(row)
    total_row = [
        "Total",
        *(_money(sum(v.get(reg, 0.0) for v in services.values())) for reg in regions),
        _money(result.total),
    ]
    if seed:
        total_row.append(_money(SEED_TOTAL))
    rows.append(total_row)
    out += _table(header, rows, "l" + "r" * (len(header) - 1))
    if seed:
        out += [
            "  seed's table: RDS primary $85 + two read replicas $70 each (here: Aurora), ElastiCache $25, Kinesis "
            "4 shards $15, DynamoDB on-demand $20; it names no other service. Why they differ: docs/plan.md."
        ]
    if detail:
        out += ["", "Cost lines"]
        line_rows = [
            [
                li.service,
                li.region,
                li.unit,
                _qty(li.quantity),
                f"{li.unit_usd:g}" + ("*" if li.price_region != li.region else ""),
                _money(li.usd),
            ]
            for li in result.lines
        ]
        out += _table(["service", "region", "what", "quantity", "unit price", "USD"], line_rows, "lllrrr")
        out += ["  * priced at the default region's rate (no line for this region)"]
    if result.warnings:
        out += ["", "Warnings"] + [f"  - {w}" for w in result.warnings]
    out += ["", "Assumptions"] + [f"  - {a}" for a in result.assumptions]
    return "\n".join(out)
