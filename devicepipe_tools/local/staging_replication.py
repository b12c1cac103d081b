"""S3 replication of staged readings into the warehouse region's bucket, the local stack's stand-in.

In AWS the secondary stack's ``StagingBucket`` carries a replication rule (template.yaml,
``ReplicationConfiguration``): S3 copies every new object under ``readings/origin=<secondary>/`` into the
primary region's staging bucket under the same key, so the primary's loader lists and COPYs one bucket of its
own region (docs/warehouse-regions.md). moto keeps the rule but runs no replication, so the local loader worker
calls ``StagingReplicator.run`` before each load cycle. The rule's prefix comes from the template.

How it differs from S3 Cross-Region Replication:

- it runs in the loader's schedule (every tick, just before the cycle) instead of asynchronously within
  seconds to 15 minutes (S3 RTC), and not at all while the primary region is down (the loader is down too;
  in AWS S3 keeps replicating and the objects wait for the loader: nothing is lost either way);
- a copy is a new object in the target: its ``LastModified`` is the copy time, not the source's creation
  time that S3 replication keeps, so the local load lag does not include the replication lag;
- it copies the current version of each key (a rewritten key again), not every version; no delete markers
  (as the rule: ``DeleteMarkerReplication`` disabled), no KMS re-encryption, no IAM role, no metrics;
- while the source region is down its objects wait, as S3 replication's would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from devicepipe_tools.local.resources import RegionResources, Resolver


def replication_prefixes(template: dict[str, Any], region: str, logical_id: str = "StagingBucket") -> list[str]:
    """The key prefixes the bucket's replication rules copy, as the stack of ``region`` would resolve them."""
    config = template["Resources"][logical_id]["Properties"].get("ReplicationConfiguration")
    if isinstance(config, dict) and "Fn::If" in config:
        config = config["Fn::If"][1]  # the rule as it applies in the secondary region
    if not isinstance(config, dict):
        return []
    resolver = Resolver(template, RegionResources(region))
    return [str(resolver.resolve(rule["Filter"]["Prefix"])) for rule in config["Rules"] if rule["Status"] == "Enabled"]


@dataclass
class StagingReplicator:
    """Copies new objects under ``prefix`` from ``source_bucket`` (read with ``source``, a client of its region)
    into ``target_bucket`` (written with ``target``), each key once per content."""

    source: Any
    source_bucket: str
    target: Any
    target_bucket: str
    prefix: str
    copied: dict[str, str] = field(default_factory=dict)  # key -> ETag of the content copied
    _seeded: bool = False

    def run(self) -> int:
        """Copy what is new or changed since the last run; returns how many objects were copied."""
        if not self._seeded:  # a restarted worker does not copy again what an earlier one copied
            self.copied.update(self._listing(self.target, self.target_bucket))
            self._seeded = True
        count = 0
        for key, etag in self._listing(self.source, self.source_bucket):
            if self.copied.get(key) == etag:
                continue
            got = self.source.get_object(Bucket=self.source_bucket, Key=key)
            self.target.put_object(
                Bucket=self.target_bucket,
                Key=key,
                Body=got["Body"].read(),
                ContentType=got.get("ContentType", "binary/octet-stream"),
            )
            self.copied[key] = etag
            count += 1
        return count

    def _listing(self, client: Any, bucket: str) -> Iterator[tuple[str, str]]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["ETag"]
