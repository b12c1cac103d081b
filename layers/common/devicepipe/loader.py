"""The loader: staged objects not yet loaded -> bounded manifests -> one transactional load each.

- One staging bucket, in the warehouse's own region. It holds both regions' readings: this region's stager
  writes ``readings/origin=<this region>/``, and S3 replication copies the other region's
  ``readings/origin=<other region>/`` objects in under the same keys (docs/warehouse-regions.md). So every
  COPY reads a manifest and objects of its own region, through the VPC's S3 gateway endpoint, without a
  ``REGION`` option; a bucket in another region is refused (``CrossRegionStaging``), never loaded with one.
- What a scheduled cycle lists is bounded by time, not by history. Staged keys sort by hour within an origin
  (``.../origin=<region>/dt=YYYY-MM-DD/hour=HH/...``, ``staging.object_key``), and the warehouse keeps a
  watermark per origin (``load_watermark``): the oldest hour that may still hold an object to load. A cycle
  lists each origin from its watermark (S3 ``StartAfter``), reads the ledger (``loaded_objects``) and the
  quarantine only inside those key ranges, and moves the watermark up to the oldest object it left pending,
  but never closer than ``late_arrival_s`` behind the newest hour it saw of that origin: an object appears in
  the bucket at most that long after its hour (the stager's record age, run time, and S3 replication).
  A backfill (``run(prefix)``) lists its whole prefix and leaves the watermarks alone.
- Pending = those listed objects minus the ledger's and the quarantine's. A replica keeps its source's key, so
  the ledger dedups it like any other object.
- Manifests are bounded by object count and bytes so one COPY stays well inside the function timeout, named
  by a hash of their content: a retried cycle rewrites the same manifest instead of making a new one.
- A load's objects are joined into a few COPY files of at least 1 MB, a multiple of the warehouse's slices
  (``compaction``): the COPY reads those, the ledger still records the staged objects one by one.
- A retryable failure (warehouse paused, busy, throttling, timeout) stops the cycle: everything left stays
  pending for the next scheduled run. A permanent one is pinned on the objects that cause it, which are
  quarantined one by one (``manifests/quarantine/<object key>.json``, with the warehouse's file/line/column/
  reason); the rest load in the same cycle. The warehouse names a bad object's file for most data errors
  (``sys_load_error_detail``); otherwise the manifest is split in halves and each tried, down to the object.
  A joined file named by the warehouse narrows the search to its objects; an object that is not gzip is
  found while joining, and quarantined before any COPY.
  A failure is only pinned on an object once something loaded in the same cycle: when nothing loads at all
  (a permission or SQL error, not the data) nothing is quarantined and the objects stay pending.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from devicepipe.compaction import CorruptObject, Sizing, groups, join, locate
from devicepipe.observability import logger
from devicepipe.retry import Backoff, Deadline, error_code
from devicepipe.staging import PREFIX as STAGED_PREFIX
from devicepipe.warehouse import (
    DDL,
    LoadFailed,
    Warehouse,
    ledger_document,
    load_statements,
    loaded_keys_query,
    watermark_statements,
    watermarks_query,
)

MANIFEST_PREFIX = "manifests"
QUARANTINE_PREFIX = f"{MANIFEST_PREFIX}/quarantine"
#: Joined COPY files: disposable copies of staged objects, needed only until their load commits (the staging
#: bucket's lifecycle expires them; a retried load rewrites the same keys).
COMPACTED_PREFIX = f"{MANIFEST_PREFIX}/compacted"
#: Staged objects fetched at once while joining (S3 GETs of about 100 KiB: latency, not bandwidth, bound); at
#: most twice as many are held fetched and not yet joined.
FETCH_THREADS = 16
#: Seconds of joining per MiB of staged gzip on LoaderFunction's 512 MB (about 0.3 of a vCPU: 122 ms per MiB
#: measured on a full core by make bench, rounded up): a manifest whose joining would not fit in what is left of
#: the invocation is left for the next cycle.
JOIN_S_PER_MIB = 0.5
#: S3 errors on one object that say nothing of the object's data: it is not quarantined for them (nothing is, if
#: nothing loads: a missing permission fails every object alike), the load fails permanently and is isolated.
_DENIED = ("AccessDenied", "InvalidObjectState", "KMS.DisabledException", "KMS.KMSInvalidStateException")
#: How long after its hour an object may still appear in the bucket: the stager's MaximumRecordAgeInSeconds
#: (3600: older records go to its on-failure queue, not to staging) + its timeout and batching window (70 s) +
#: S3 Replication Time Control's 15 minutes for the other region's replicas, rounded up with a margin.
#: Later objects are loaded by a backfill of their prefix. Pinned against the template in the tests.
LATE_ARRIVAL_S = 2 * 3600
#: Retries of the schema's DDL: jittered, so that loaders that collided do not collide again.
SCHEMA_BACKOFF = Backoff(base_s=0.1, cap_s=1.0, max_attempts=5)
_PARTITION = re.compile(r"/(dt=\d{4}-\d{2}-\d{2}/hour=\d{2})/")
_PARTITION_FORMAT = "dt=%Y-%m-%d/hour=%H"


class CrossRegionStaging(ValueError):
    """A staging bucket outside the warehouse's region: refused rather than loaded with ``COPY ... REGION``."""


@dataclass(frozen=True)
class Source:
    """A staging bucket and the region it lives in."""

    bucket: str
    region: str

    def check_in(self, region: str) -> None:
        """Refuse a bucket outside the warehouse's ``region`` (see ``CrossRegionStaging``)."""
        if self.region != region:
            raise CrossRegionStaging(
                f"staging bucket {self.bucket} is in {self.region}, the warehouse in {region}: the loader reads "
                f"only its own region's bucket (a COPY with REGION needs its manifest in that region too, and the "
                f"VPC has no path to another region's S3). Replicate {self.region}'s staging into {region}'s "
                "bucket instead: docs/warehouse-regions.md"
            )

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class StagedObject:
    source: Source
    key: str
    size: int
    modified_s: float = 0.0  # when it was staged (S3 LastModified), for the load-lag metric

    @property
    def url(self) -> str:
        return self.source.url(self.key)

    @property
    def partition(self) -> str | None:
        """Its hour, ``dt=YYYY-MM-DD/hour=HH`` (sortable), or None for a key outside the staging layout."""
        match = _PARTITION.search(self.key)
        return match.group(1) if match else None


@dataclass(frozen=True)
class KeyRange:
    """Keys under ``prefix``, and after ``start_after`` if set (S3's ``StartAfter``: exclusive)."""

    prefix: str
    start_after: str = ""


@dataclass(frozen=True)
class Manifest:
    """A COPY manifest: the objects of one load (all in one source)."""

    source: Source
    objects: tuple[StagedObject, ...]

    def __post_init__(self) -> None:
        strays = [o.url for o in self.objects if o.source != self.source]
        if strays:
            raise CrossRegionStaging(f"a manifest of {self.source.bucket} cannot name {strays[0]}")

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\n".join(o.url for o in self.objects).encode()).hexdigest()[:20]
        return f"{MANIFEST_PREFIX}/{self.source.region}/{digest}.json"

    @property
    def ledger_key(self) -> str:
        """The ledger file beside the manifest: its object keys, COPYed into the ledger in the load's transaction.
        No other key starts with it (COPY without MANIFEST reads every object under a key prefix)."""
        return self.key.removesuffix(".json") + ".objects.jsonl.gz"

    @property
    def digest(self) -> str:
        return self.key.removeprefix(f"{MANIFEST_PREFIX}/{self.source.region}/").removesuffix(".json")

    def document(self, files: Sequence[CopyFile] | None = None) -> bytes:
        """The COPY manifest over ``files`` (the objects themselves by default)."""
        chosen = files if files is not None else [CopyFile(o.url, o.size, (o,)) for o in self.objects]
        entries = [{"url": f.url, "mandatory": True, "meta": {"content_length": f.size}} for f in chosen]
        return json.dumps({"entries": entries}, indent=1).encode()

    def ledger(self) -> bytes:
        return ledger_document([o.url for o in self.objects])


@dataclass(frozen=True)
class CopyFile:
    """A file a COPY reads: a staged object itself, or a joined file made of several (``objects``)."""

    url: str
    size: int
    objects: tuple[StagedObject, ...]
    lines: tuple[int, ...] = ()  # of a joined file: how many lines each object holds

    def blame(self, error: dict[str, Any]) -> dict[str, Any]:
        """A load error of this joined file as the error of the staged object holding its line; without a line,
        the error lists the file's ``objects`` (one of them is bad)."""
        found = locate(int(error.get("line") or 0), self.lines)
        if found is None:
            return {**error, "objects": [o.url for o in self.objects]}
        index, line = found
        return {**error, "file": self.objects[index].url, "line": line, "joined": f"{self.url} line {error['line']}"}


@dataclass
class LoadReport:
    listed_objects: int = 0  # staged objects the cycle listed (its window), loaded before or not
    pending_objects: int = 0
    manifests: int = 0
    loaded_manifests: list[str] = field(default_factory=list)  # every committed load, halves of a split included
    loaded_objects: int = 0
    copies: int = 0  # load transactions tried
    copy_files: int = 0  # files the committed loads read (joined ones, or objects loaded as they are)
    copy_bytes: int = 0  # their compressed bytes
    failed: list[dict[str, Any]] = field(default_factory=list)  # objects quarantined in this cycle, with errors
    unattributed: list[str] = field(default_factory=list)  # permanent failures pinned on no object (left pending)
    deferred: str = ""  # why the cycle stopped early (retryable failure)
    oldest_pending_age_s: float = 0.0  # age of the oldest staged object still not loaded after the cycle


class _Unattributed(Exception):
    """A permanent failure that nothing proves to be the data's: nothing loaded in the cycle yet."""

    def __init__(self, failure: LoadFailed) -> None:
        super().__init__(str(failure))
        self.failure = failure


@dataclass
class _Cycle:
    report: LoadReport
    done: set[str] = field(default_factory=set)  # URLs loaded or quarantined in this cycle


def quarantine_key(object_key: str) -> str:
    """Where an object's quarantine record is kept: its key under ``QUARANTINE_PREFIX``, so records list in the
    same order, and by the same key ranges, as the objects."""
    return f"{QUARANTINE_PREFIX}/{object_key}.json"


def _partition_at(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime(_PARTITION_FORMAT)


def _shift(partition: str, seconds: float) -> str:
    at = datetime.strptime(partition, _PARTITION_FORMAT).replace(tzinfo=UTC) + timedelta(seconds=seconds)
    return at.strftime(_PARTITION_FORMAT)


@dataclass
class Loader:
    """Runs load cycles.

    Parameters
    ----------
    s3
        boto3 S3 client (lists staging, writes manifests and quarantine records).
    warehouse
        Redshift Data API adapter, or the local DuckDB one.
    source
        The staging bucket to load from: in the warehouse's region, holding both regions' readings.
    manifest_bucket
        Where manifests (and quarantine records) are written (the staging bucket in AWS: same region).
    role_arn
        The role Redshift assumes to read the staging objects.
    max_objects, max_bytes
        Bounds of one manifest.
    region
        The warehouse's region (empty: the source's); a source elsewhere raises ``CrossRegionStaging``.
    late_arrival_s
        How far behind the newest hour seen of an origin its watermark stays (see ``LATE_ARRIVAL_S``).
    sizing
        How a load's objects are joined into COPY files (``compaction.Sizing``; ``Sizing(0)`` never joins).
    deadline
        The invocation's time left: a manifest is joined only if that fits (``JOIN_S_PER_MIB``).
    """

    s3: Any
    warehouse: Warehouse
    source: Source
    manifest_bucket: str
    role_arn: str = ""
    max_objects: int = 500
    max_bytes: int = 512 * 1024 * 1024
    region: str = ""
    late_arrival_s: float = LATE_ARRIVAL_S
    sizing: Sizing = field(default_factory=Sizing)
    deadline: Deadline = field(default_factory=Deadline.unlimited)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _schema_ready: bool = False

    def __post_init__(self) -> None:
        self.source.check_in(self.region or self.source.region)

    def ensure_schema(self) -> None:
        """Create the tables if missing (once per container).

        IF NOT EXISTS is no lock: of two creates at once, one fails (a duplicate in the catalog on Redshift and
        PostgreSQL, a catalog write-write conflict on DuckDB), and Redshift promises only that "if the specified
        table already exists, the command should make no changes"
        (https://docs.aws.amazon.com/redshift/latest/dg/r_CREATE_TABLE_NEW.html). Run again, the same DDL finds
        the tables and does nothing, so any failure is retried a few times; one that persists is raised.
        """
        if self._schema_ready:
            return
        for retry in range(SCHEMA_BACKOFF.max_attempts):
            try:
                self.warehouse.execute(DDL)
                break
            except LoadFailed as exc:
                if retry + 1 == SCHEMA_BACKOFF.max_attempts:
                    raise
                logger.warning("schema creation failed; trying again", extra={"error": str(exc)})
                self.sleep(SCHEMA_BACKOFF.delay(retry))
        self._schema_ready = True

    # --- what to load ------------------------------------------------------------------------------------------

    def ranges(self, marks: dict[str, str] | None = None) -> list[KeyRange]:
        """What a scheduled cycle lists: each origin's keys from its watermark hour on (all of them without one)."""
        marks = self.watermarks() if marks is None else marks
        return [KeyRange(o, f"{o}{marks[o]}" if o in marks else "") for o in self.origins()]

    def origins(self) -> list[str]:
        """The origin prefixes in the bucket (``readings/origin=<region>/``): one delimited listing."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.source.bucket, Prefix=f"{STAGED_PREFIX}/", Delimiter="/"
        )
        return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]

    def watermarks(self) -> dict[str, str]:
        """Each origin prefix's watermark hour, as the warehouse keeps it."""
        rows = self.warehouse.query(watermarks_query(self.source.url(f"{STAGED_PREFIX}/")))
        base = len(self.source.url(""))
        return {str(prefix)[base:]: str(partition) for prefix, partition in rows}

    def staged(self, prefix: str = STAGED_PREFIX + "/") -> list[StagedObject]:
        """Every staged object under ``prefix`` (every origin region's) in the staging bucket.

        A replica's ``LastModified`` is its source object's creation time (S3 replication keeps it), so the
        load lag computed from it includes the replication lag.
        """
        return self._list([KeyRange(prefix)])

    def pending(self, prefix: str | None = None) -> list[StagedObject]:
        """What a cycle would load: the scheduled cycle's window, or everything not loaded under ``prefix``."""
        return self._pending([KeyRange(prefix)] if prefix else self.ranges())[1]

    def _pending(self, ranges: Sequence[KeyRange]) -> tuple[list[StagedObject], list[StagedObject]]:
        """(listed, pending) over the key ranges: one ledger query and one quarantine listing per range."""
        listed = self._list(ranges)
        if not listed:
            return [], []
        excluded = self.loaded_objects(ranges) | self.quarantined_objects(ranges)
        return listed, [o for o in listed if o.url not in excluded]

    def _list(self, ranges: Sequence[KeyRange]) -> list[StagedObject]:
        return [
            StagedObject(self.source, obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp())
            for r in ranges
            for obj in self._keys(self.source.bucket, r)
            if obj["Key"].endswith(".jsonl.gz")
        ]

    def _keys(self, bucket: str, key_range: KeyRange) -> Iterator[dict[str, Any]]:
        kwargs = {"Bucket": bucket, "Prefix": key_range.prefix}
        if key_range.start_after:
            kwargs["StartAfter"] = key_range.start_after
        for page in self.s3.get_paginator("list_objects_v2").paginate(**kwargs):
            yield from page.get("Contents", [])

    def loaded_objects(self, ranges: Sequence[KeyRange]) -> set[str]:
        """The ledger's URLs inside the key ranges (not the whole ledger)."""
        if not ranges:
            return set()
        url_ranges = [
            (self.source.url(r.prefix), self.source.url(r.start_after) if r.start_after else "") for r in ranges
        ]
        return {str(row[0]) for row in self.warehouse.query(loaded_keys_query(url_ranges))}

    def quarantined_objects(self, ranges: Sequence[KeyRange]) -> set[str]:
        """The URLs of quarantined objects inside the key ranges (their records list beside each other)."""
        urls: set[str] = set()
        for r in ranges:
            records = KeyRange(
                f"{QUARANTINE_PREFIX}/{r.prefix}", r.start_after and f"{QUARANTINE_PREFIX}/{r.start_after}"
            )
            urls.update(
                self.source.url(self._object_key(obj["Key"])) for obj in self._keys(self.manifest_bucket, records)
            )
        return urls

    def plan(self, objects: Sequence[StagedObject]) -> list[Manifest]:
        """Group objects into manifests: in key order (so per origin region), bounded by count and bytes."""
        manifests: list[Manifest] = []
        group: list[StagedObject] = []
        size = 0
        for obj in sorted(objects, key=lambda o: o.key):
            if group and (len(group) >= self.max_objects or size + obj.size > self.max_bytes):
                manifests.append(Manifest(self.source, tuple(group)))
                group, size = [], 0
            group.append(obj)
            size += obj.size
        if group:
            manifests.append(Manifest(self.source, tuple(group)))
        return manifests

    # --- loading -----------------------------------------------------------------------------------------------

    def load(self, manifest: Manifest) -> list[CopyFile]:
        """Join the manifest's objects into COPY files, write the COPY manifest and the ledger file, and load them
        in one transaction; return the files read. Raises ``LoadFailed``: a warehouse error that names a joined
        file lists that file's ``objects``; an object that is not gzip fails the load before any COPY."""
        try:
            files = self.copy_files(manifest)
        except CorruptObject as exc:
            error = {"file": exc.name, "line": 0, "column": None, "reason": exc.reason}
            raise LoadFailed(str(exc), retryable=False, errors=[error]) from None
        self.s3.put_object(
            Bucket=self.manifest_bucket,
            Key=manifest.key,
            Body=manifest.document(files),
            ContentType="application/json",
        )
        self.s3.put_object(
            Bucket=self.manifest_bucket, Key=manifest.ledger_key, Body=manifest.ledger(), ContentType="application/gzip"
        )
        try:
            self.warehouse.execute(
                load_statements(
                    f"s3://{self.manifest_bucket}/{manifest.key}",
                    manifest.key,
                    f"s3://{self.manifest_bucket}/{manifest.ledger_key}",
                    len(manifest.objects),
                    self.role_arn,
                )
            )
        except LoadFailed as exc:
            joined = {f.url: f for f in files if f.lines}
            exc.errors = [
                joined[file].blame(e) if (file := str(e.get("file") or "").strip()) in joined else e for e in exc.errors
            ]
            raise
        return files

    def copy_files(self, manifest: Manifest) -> list[CopyFile]:
        """The files a load reads: runs of its objects joined (``compaction``), written under ``COMPACTED_PREFIX``
        with keys that depend only on the objects, so a retried load rewrites the same files."""
        large = self.sizing.min_file_bytes or None  # an object of a file's size is a file as it is
        whole = [CopyFile(o.url, o.size, (o,)) for o in manifest.objects if large and o.size >= large]
        small = tuple(o for o in manifest.objects if not (large and o.size >= large))
        sizes = [o.size for o in small]
        joined_mib = sum(sizes) / 2**20 if len(small) > 1 and large else 0.0
        if joined_mib and not self.deadline.allows(joined_mib * JOIN_S_PER_MIB):
            raise LoadFailed(f"no time left to join {joined_mib:.0f} MiB of staged objects", retryable=True)
        runs = groups(sizes, self.sizing.file_count(sum(sizes), len(small)))
        files = list(whole)
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for number, run in enumerate(runs):
                members = small[run.start : run.stop]
                if len(members) == 1:
                    files.append(CopyFile(members[0].url, members[0].size, members))
                    continue
                body, lines = join(self._fetched(pool, members))
                key = f"{COMPACTED_PREFIX}/{manifest.digest}/part-{number:04d}-of-{len(runs):04d}.jsonl.gz"
                self.s3.put_object(Bucket=self.manifest_bucket, Key=key, Body=body, ContentType="application/gzip")
                files.append(CopyFile(f"s3://{self.manifest_bucket}/{key}", len(body), members, tuple(lines)))
        return files

    def _fetched(self, pool: ThreadPoolExecutor, members: Sequence[StagedObject]) -> Iterator[tuple[str, bytes]]:
        """The members' bodies in order, fetched ``FETCH_THREADS`` at a time, a window ahead at most. Raises
        ``LoadFailed``: retryable for an S3 error a later cycle may not see, permanent (not pinned on the object)
        for a denied one, permanent and pinned on the object for one that is not gzip (raised by ``join``)."""
        window = 2 * FETCH_THREADS
        for first in range(0, len(members), window):
            chunk = members[first : first + window]
            try:
                bodies = list(pool.map(self._body, chunk))
            except (ClientError, BotoCoreError) as exc:
                code = error_code(exc)
                raise LoadFailed(f"staged object not read: {exc}", retryable=code not in _DENIED) from None
            yield from zip((o.url for o in chunk), bodies, strict=True)

    def _body(self, obj: StagedObject) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.source.bucket, Key=obj.key)["Body"].read()
        return body

    def run(self, prefix: str | None = None) -> LoadReport:
        """One cycle: the scheduled window (``prefix`` None), or a backfill of everything not loaded under it."""
        prefix = prefix or None
        cycle = _Cycle(LoadReport())
        report = cycle.report
        self.ensure_schema()
        marks = self.watermarks() if prefix is None else {}
        ranges = self.ranges(marks) if prefix is None else [KeyRange(prefix)]
        listed, objects = self._pending(ranges)
        manifests = self.plan(objects)
        report.listed_objects, report.pending_objects, report.manifests = len(listed), len(objects), len(manifests)
        self._load_all(manifests, cycle)
        left = [o for o in objects if o.url not in cycle.done]
        ages = [o.modified_s for o in left if o.modified_s]
        report.oldest_pending_age_s = round(self.clock() - min(ages), 1) if ages else 0.0
        if prefix is None:
            self._advance(marks, ranges, listed, left)
        return report

    def _load_all(self, manifests: Sequence[Manifest], cycle: _Cycle) -> None:
        """Load each manifest, isolating bad objects; stop at a retryable failure (everything left stays pending).
        Failures pinned on nothing are tried again once something else has loaded in the cycle."""
        unattributed: list[Manifest] = []
        current = ""
        try:
            for manifest in manifests:
                current = manifest.key
                try:
                    self._load_isolating(manifest.objects, cycle)
                except _Unattributed:
                    unattributed.append(manifest)
            for manifest in list(unattributed) if cycle.report.loaded_objects else []:
                current = manifest.key
                self._load_isolating(tuple(o for o in manifest.objects if o.url not in cycle.done), cycle)
                unattributed.remove(manifest)
        except LoadFailed as exc:  # only retryable ones get here
            cycle.report.deferred = f"{current}: {exc}"
            logger.warning("load deferred to the next cycle", extra={"manifest": current, "error": str(exc)})
        for manifest in unattributed:
            cycle.report.unattributed.append(manifest.key)
            logger.error("load failed permanently, no object to blame: left pending", extra={"manifest": manifest.key})

    def _load_isolating(self, objects: Sequence[StagedObject], cycle: _Cycle) -> None:
        if objects and (failure := self._attempt(objects, cycle)):
            self._isolate(objects, failure, cycle)

    def _attempt(self, objects: Sequence[StagedObject], cycle: _Cycle) -> LoadFailed | None:
        """Load the objects as one manifest: None if it committed, the failure if it is permanent (a retryable
        one is raised)."""
        manifest = Manifest(self.source, tuple(objects))
        cycle.report.copies += 1
        try:
            files = self.load(manifest)
        except LoadFailed as exc:
            if exc.retryable:
                raise
            logger.warning("load failed permanently", extra={"manifest": manifest.key, "objects": len(objects)})
            return exc
        cycle.report.copy_files += len(files)
        cycle.report.copy_bytes += sum(f.size for f in files)
        cycle.report.loaded_manifests.append(manifest.key)
        cycle.report.loaded_objects += len(objects)
        cycle.done.update(o.url for o in objects)
        return None

    def _isolate(self, objects: Sequence[StagedObject], failure: LoadFailed, cycle: _Cycle) -> None:
        """Objects whose load failed permanently: quarantine the bad ones and load the rest."""
        named = {str(e.get("file") or "").strip() for e in failure.errors}
        bad = [o for o in objects if o.url in named]
        if bad:  # the warehouse said which file holds the rejected line
            for obj in bad:
                self.quarantine(obj, failure, cycle)
            self._load_isolating([o for o in objects if o.url not in named], cycle)
            return
        suspects = {url for e in failure.errors for url in e.get("objects", ())}
        if 0 < len(suspects & {o.url for o in objects}) < len(objects):  # a joined file was named
            self._load_isolating([o for o in objects if o.url not in suspects], cycle)
            self._load_isolating([o for o in objects if o.url in suspects], cycle)
            return
        if len(objects) == 1:
            if not cycle.report.loaded_objects:
                raise _Unattributed(failure)
            self.quarantine(objects[0], failure, cycle)
            return
        half = len(objects) // 2
        parts = (objects[:half], objects[half:])
        failures = [self._attempt(part, cycle) for part in parts]
        if all(failures) and not cycle.report.loaded_objects:
            raise _Unattributed(failure)
        for part, part_failure in zip(parts, failures, strict=True):
            if part_failure:
                self._isolate(part, part_failure, cycle)

    # --- quarantine --------------------------------------------------------------------------------------------

    def quarantine(self, obj: StagedObject, failure: LoadFailed, cycle: _Cycle) -> dict[str, Any]:
        """Move a permanently failing object out of the loads: a record of what the warehouse said (at
        ``quarantine_key``), which keeps it from being pending again until ``reload``. The object stays in place."""
        errors = [e for e in failure.errors if str(e.get("file") or "").strip() == obj.url] or failure.errors
        doc = {
            "object": obj.url,
            "key": obj.key,
            "error": str(failure),
            "errors": errors,
            "quarantined_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
        }
        self.s3.put_object(
            Bucket=self.manifest_bucket,
            Key=quarantine_key(obj.key),
            Body=json.dumps(doc, indent=1, default=str).encode(),
            ContentType="application/json",
        )
        cycle.report.failed.append(doc)
        cycle.done.add(obj.url)
        logger.error("staged object failed to load; quarantined", extra=doc)
        return doc

    def quarantine_records(self) -> list[dict[str, Any]]:
        """Every quarantined object's record (an operator's listing: it reads them all)."""
        keys = self._keys(self.manifest_bucket, KeyRange(f"{QUARANTINE_PREFIX}/"))
        return [self._record(obj["Key"]) for obj in keys]

    def quarantine_record(self, name: str) -> dict[str, Any] | None:
        """The record of one quarantined object (its key, URL or record key), or None."""
        try:
            return self._record(quarantine_key(self._object_key(name)))
        except self.s3.exceptions.NoSuchKey:
            return None

    def _record(self, key: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.s3.get_object(Bucket=self.manifest_bucket, Key=key)["Body"].read())
        return doc

    def _object_key(self, name: str) -> str:
        return name.removeprefix(self.source.url("")).removeprefix(f"{QUARANTINE_PREFIX}/").removesuffix(".json")

    def reload(self, name: str) -> None:
        """Operator action, once the object is fixed in place: load a quarantined object again, then take it out
        of quarantine (raises ``LoadFailed`` if it still fails; it stays quarantined then)."""
        key = self._object_key(name)
        if self.quarantine_record(key) is None:
            raise LoadFailed(f"{key} is not quarantined", retryable=False)
        found = [o for o in self._list([KeyRange(key)]) if o.key == key]
        if not found:
            raise LoadFailed(f"{key} is no longer staged", retryable=False)
        self.ensure_schema()
        self.load(Manifest(self.source, (found[0],)))
        self.s3.delete_object(Bucket=self.manifest_bucket, Key=quarantine_key(key))

    # --- watermarks --------------------------------------------------------------------------------------------

    def _advance(
        self,
        marks: dict[str, str],
        ranges: Sequence[KeyRange],
        listed: Sequence[StagedObject],
        left: Sequence[StagedObject],
    ) -> None:
        """Move each origin's watermark up to the oldest hour it left pending, at most ``late_arrival_s`` behind
        the newest hour listed (or now, if that is earlier). Never down: a lower mark is safe but lists more."""
        now = _partition_at(self.clock())
        moved: dict[str, str] = {}
        for r in ranges:
            seen = [o.partition for o in listed if o.key.startswith(r.prefix)]
            waiting = [o.partition for o in left if o.key.startswith(r.prefix)]
            if None in seen or None in waiting or not seen:
                continue  # a key outside the layout has no hour: keep listing from where this origin is
            horizon = _shift(min(max(p for p in seen if p), now), -self.late_arrival_s)
            mark = max(min([horizon, *(p for p in waiting if p)]), marks.get(r.prefix, ""))
            if mark != marks.get(r.prefix):
                moved[self.source.url(r.prefix)] = mark
        if not moved:
            return
        try:
            self.warehouse.execute(watermark_statements(moved))
        except LoadFailed as exc:  # a hint only: the next cycle lists from the old marks and sets them again
            logger.warning("watermarks not saved", extra={"error": str(exc), "watermarks": moved})
