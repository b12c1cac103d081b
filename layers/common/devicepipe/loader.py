"""The loader: staged objects not yet loaded -> bounded manifests -> one transactional load each.

- One staging bucket, in the warehouse's own region. It holds both regions' readings: this region's stager
  writes ``readings/origin=<this region>/``, and S3 replication copies the other region's
  ``readings/origin=<other region>/`` objects in under the same keys (docs/warehouse-regions.md). So every
  COPY reads a manifest and objects of its own region, through the VPC's S3 gateway endpoint, without a
  ``REGION`` option; a bucket in another region is refused (``CrossRegionStaging``), never loaded with one.
- Pending = every staged object under ``readings/`` in that bucket, minus the objects the warehouse's
  ``loaded_objects`` holds, minus the objects of quarantined (permanently failed) manifests. A replica keeps
  its source's key, so the ledger dedups it like any other object.
- Manifests are bounded by object count and bytes so one COPY stays well inside the function timeout, named
  by a hash of their content: a retried cycle rewrites the same manifest instead of making a new one.
- A retryable failure (warehouse paused, busy, throttling, timeout) stops the cycle: everything left stays
  pending for the next scheduled run. A permanent one (bad data) quarantines the manifest under
  ``manifests/failed/`` with the warehouse's file/line/column/reason, and the cycle goes on with the next.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devicepipe.observability import logger
from devicepipe.staging import PREFIX as STAGED_PREFIX
from devicepipe.warehouse import DDL, LOADED_KEYS, LoadFailed, Warehouse, ledger_document, load_statements

MANIFEST_PREFIX = "manifests"
FAILED_PREFIX = f"{MANIFEST_PREFIX}/failed"


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


@dataclass(frozen=True)
class StagedObject:
    source: Source
    key: str
    size: int
    modified_s: float = 0.0  # when it was staged (S3 LastModified), for the load-lag metric

    @property
    def url(self) -> str:
        return f"s3://{self.source.bucket}/{self.key}"


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

    def document(self) -> bytes:
        entries = [{"url": o.url, "mandatory": True, "meta": {"content_length": o.size}} for o in self.objects]
        return json.dumps({"entries": entries}, indent=1).encode()

    def ledger(self) -> bytes:
        return ledger_document([o.url for o in self.objects])


@dataclass
class LoadReport:
    pending_objects: int = 0
    manifests: int = 0
    loaded_manifests: list[str] = field(default_factory=list)
    loaded_objects: int = 0
    copies: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # quarantined manifests with their errors
    deferred: str = ""  # why the cycle stopped early (retryable failure)
    oldest_pending_age_s: float = 0.0  # age of the oldest staged object still not loaded after the cycle


@dataclass
class Loader:
    """Runs load cycles.

    Parameters
    ----------
    s3
        boto3 S3 client (lists staging, writes manifests).
    warehouse
        Redshift Data API adapter, or the local DuckDB one.
    source
        The staging bucket to load from: in the warehouse's region, holding both regions' readings.
    manifest_bucket
        Where manifests (and quarantined ones) are written (the staging bucket in AWS: same region).
    role_arn
        The role Redshift assumes to read the staging objects.
    max_objects, max_bytes
        Bounds of one manifest.
    region
        The warehouse's region (empty: the source's); a source elsewhere raises ``CrossRegionStaging``.
    """

    s3: Any
    warehouse: Warehouse
    source: Source
    manifest_bucket: str
    role_arn: str = ""
    max_objects: int = 500
    max_bytes: int = 512 * 1024 * 1024
    region: str = ""
    _schema_ready: bool = False

    def __post_init__(self) -> None:
        self.source.check_in(self.region or self.source.region)

    def ensure_schema(self) -> None:
        """Create the tables if missing (idempotent; once per container)."""
        if not self._schema_ready:
            self.warehouse.execute(DDL)
            self._schema_ready = True

    def pending(self, prefix: str = STAGED_PREFIX + "/") -> list[StagedObject]:
        excluded = self.loaded_objects() | self.quarantined_objects()
        return [o for o in self.staged(prefix) if o.url not in excluded]

    def staged(self, prefix: str = STAGED_PREFIX + "/") -> list[StagedObject]:
        """Every staged object under ``prefix`` (every origin region's) in the staging bucket.

        A replica's ``LastModified`` is its source object's creation time (S3 replication keeps it), so the
        load lag computed from it includes the replication lag.
        """
        found = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.source.bucket, Prefix=prefix)
        for page in pages:
            found += [
                StagedObject(self.source, obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp())
                for obj in page.get("Contents", [])
                if obj["Key"].endswith(".jsonl.gz")
            ]
        return found

    def loaded_objects(self) -> set[str]:
        return {str(r[0]) for r in self.warehouse.query(LOADED_KEYS)}

    def quarantined_objects(self) -> set[str]:
        urls: set[str] = set()
        for doc in self.failed_manifests():
            urls.update(doc["objects"])
        return urls

    def failed_manifests(self) -> list[dict[str, Any]]:
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.manifest_bucket, Prefix=FAILED_PREFIX)
        for page in pages:
            for obj in page.get("Contents", []):
                out.append(json.loads(self.s3.get_object(Bucket=self.manifest_bucket, Key=obj["Key"])["Body"].read()))
        return out

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

    def load(self, manifest: Manifest) -> None:
        """Write the manifest and its ledger file, and load them in one transaction (raises ``LoadFailed``)."""
        self.s3.put_object(
            Bucket=self.manifest_bucket, Key=manifest.key, Body=manifest.document(), ContentType="application/json"
        )
        self.s3.put_object(
            Bucket=self.manifest_bucket, Key=manifest.ledger_key, Body=manifest.ledger(), ContentType="application/gzip"
        )
        self.warehouse.execute(
            load_statements(
                f"s3://{self.manifest_bucket}/{manifest.key}",
                manifest.key,
                f"s3://{self.manifest_bucket}/{manifest.ledger_key}",
                len(manifest.objects),
                self.role_arn,
            )
        )

    def run(self, prefix: str = STAGED_PREFIX + "/") -> LoadReport:
        """One cycle: load every pending object under ``prefix`` (a backfill narrows it)."""
        report = LoadReport()
        self.ensure_schema()
        objects = self.pending(prefix)
        manifests = self.plan(objects)
        report.pending_objects, report.manifests = len(objects), len(manifests)
        for manifest in manifests:
            report.copies += 1
            try:
                self.load(manifest)
            except LoadFailed as exc:
                if exc.retryable:
                    report.deferred = f"{manifest.key}: {exc}"
                    logger.warning(
                        "load deferred to the next cycle", extra={"manifest": manifest.key, "error": str(exc)}
                    )
                    break
                report.failed.append(self.quarantine(manifest, exc))
                continue
            report.loaded_manifests.append(manifest.key)
            report.loaded_objects += len(manifest.objects)
        loaded = {o.url for m in manifests if m.key in report.loaded_manifests for o in m.objects}
        left = [o.modified_s for o in objects if o.url not in loaded and o.modified_s]
        report.oldest_pending_age_s = round(time.time() - min(left), 1) if left else 0.0
        return report

    def quarantine(self, manifest: Manifest, exc: LoadFailed) -> dict[str, Any]:
        """Keep a permanently failing manifest out of the retry loop, with what the warehouse said."""
        doc = {
            "manifest": manifest.key,
            "objects": [o.url for o in manifest.objects],
            "error": str(exc),
            "errors": exc.errors,
        }
        name = manifest.key.rsplit("/", 1)[1]
        self.s3.put_object(
            Bucket=self.manifest_bucket,
            Key=f"{FAILED_PREFIX}/{name}",
            Body=json.dumps(doc, indent=1, default=str).encode(),
            ContentType="application/json",
        )
        logger.error("load failed permanently; manifest quarantined", extra=doc)
        return doc

    def reload(self, manifest_name: str) -> None:
        """Operator action: take a quarantined manifest out of quarantine and load it again."""
        key = f"{FAILED_PREFIX}/{manifest_name}"
        doc = json.loads(self.s3.get_object(Bucket=self.manifest_bucket, Key=key)["Body"].read())
        loaded = self.loaded_objects()
        by_url = {o.url: o for o in self.staged() if o.url not in loaded}
        objects = tuple(by_url[u] for u in doc["objects"] if u in by_url)
        if not objects:
            raise LoadFailed(f"{manifest_name}: none of its objects is pending any more", retryable=False)
        self.load(Manifest(objects[0].source, objects))
        self.s3.delete_object(Bucket=self.manifest_bucket, Key=key)
