"""The loader: staged objects not yet loaded -> bounded manifests -> one transactional load each.

- Pending = every staged object under ``readings/`` in the configured staging buckets, minus the objects the
  warehouse's ``loaded_objects`` holds, minus the objects of quarantined (permanently failed) manifests.
- Manifests are bounded by object count and bytes so one COPY stays well inside the function timeout, built
  per staging bucket (a COPY reads one region), named by a hash of their content: a retried cycle rewrites the
  same manifest instead of making a new one.
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
from devicepipe.warehouse import DDL, LOADED_KEYS, LoadFailed, Warehouse, load_statements

MANIFEST_PREFIX = "manifests"
FAILED_PREFIX = f"{MANIFEST_PREFIX}/failed"


@dataclass(frozen=True)
class Source:
    """A staging bucket and the region it lives in."""

    bucket: str
    region: str


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

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\n".join(o.url for o in self.objects).encode()).hexdigest()[:20]
        return f"{MANIFEST_PREFIX}/{self.source.region}/{digest}.json"

    def document(self) -> bytes:
        entries = [{"url": o.url, "mandatory": True, "meta": {"content_length": o.size}} for o in self.objects]
        return json.dumps({"entries": entries}, indent=1).encode()


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
    sources
        Staging buckets to load from.
    manifest_bucket
        Where manifests (and quarantined ones) are written.
    role_arn
        The role Redshift assumes to read the staging objects.
    max_objects, max_bytes
        Bounds of one manifest.
    """

    s3: Any
    warehouse: Warehouse
    sources: Sequence[Source]
    manifest_bucket: str
    role_arn: str = ""
    max_objects: int = 500
    max_bytes: int = 512 * 1024 * 1024
    _schema_ready: bool = False

    def ensure_schema(self) -> None:
        """Create the tables if missing (idempotent; once per container)."""
        if not self._schema_ready:
            self.warehouse.execute(DDL)
            self._schema_ready = True

    def pending(self, prefix: str = STAGED_PREFIX + "/") -> list[StagedObject]:
        excluded = self.loaded_objects() | self.quarantined_objects()
        return [o for o in self.staged(prefix) if o.url not in excluded]

    def staged(self, prefix: str = STAGED_PREFIX + "/") -> list[StagedObject]:
        """Every staged object under ``prefix`` in every source."""
        found = []
        for source in self.sources:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=prefix)
            for page in pages:
                found += [
                    StagedObject(source, obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp())
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
        """Group objects into manifests: per source, in key order, bounded by count and bytes."""
        manifests: list[Manifest] = []
        for source in self.sources:
            group: list[StagedObject] = []
            size = 0
            for obj in sorted((o for o in objects if o.source == source), key=lambda o: o.key):
                if group and (len(group) >= self.max_objects or size + obj.size > self.max_bytes):
                    manifests.append(Manifest(source, tuple(group)))
                    group, size = [], 0
                group.append(obj)
                size += obj.size
            if group:
                manifests.append(Manifest(source, tuple(group)))
        return manifests

    def load(self, manifest: Manifest) -> None:
        """Write the manifest and load it in one transaction (raises ``LoadFailed``)."""
        self.s3.put_object(
            Bucket=self.manifest_bucket, Key=manifest.key, Body=manifest.document(), ContentType="application/json"
        )
        self.warehouse.execute(
            load_statements(
                f"s3://{self.manifest_bucket}/{manifest.key}",
                manifest.key,
                [o.url for o in manifest.objects],
                self.role_arn,
                manifest.source.region,
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
