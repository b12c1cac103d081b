"""How long one reading takes from its ``PutRecord`` call to visible in each store of a running local stack.

One probe reading, put as the AWS CLI's ``kinesis put-record`` puts it, then polled in each store as a person
would look for it: its reading item in the table, its device hash in Redis, a staged object holding it, and a row
in the warehouse snapshot readers open (not the loader's own file: see ``warehouse_snapshot``). Measured in the
primary region, whose staging bucket the warehouse loads. The stages differ by design: ingest and the cache updater
run without batching windows, the stager waits up to its ``MaximumBatchingWindowInSeconds`` to write fewer, larger
objects, and the loader runs every 2 s.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from devicepipe.cache import CacheWriter
from devicepipe.models import device_pk
from devicepipe.staging import PREFIX as STAGED_PREFIX
from devicepipe_tools.events import encode, reading
from devicepipe_tools.local import files
from devicepipe_tools.local.resources import clients
from devicepipe_tools.local.stack import region_resources
from devicepipe_tools.local.warehouse_snapshot import reader

STAGES = ("table", "cache", "staging", "warehouse")


def measure(state: dict[str, Any], state_dir: Path, timeout_s: float = 60, poll_s: float = 0.05) -> dict[str, Any]:
    """Seconds from the put to each stage holding the probe (None: not within ``timeout_s``)."""
    region = next(iter(state["regions"]))
    aws = clients(state["endpoint"], region, "kinesis", "dynamodb", "s3")
    res = region_resources(state, region)
    device = f"probe-latency-{time.time_ns()}"
    doc = reading(device, "probe-latency", int(time.time() * 1000), 0, temp_c=21.5)
    checks = _checks(aws, res.names, state["redis_urls"][region], state_dir, device, region)
    started = time.monotonic()
    aws["kinesis"].put_record(StreamName=res.names["ReadingsStream"], Data=encode(doc), PartitionKey=device)
    seen: dict[str, float | None] = dict.fromkeys(STAGES)
    while time.monotonic() - started < timeout_s and any(v is None for v in seen.values()):
        for stage in [s for s, v in seen.items() if v is None]:
            if checks[stage]():
                seen[stage] = round(time.monotonic() - started, 1)
        time.sleep(poll_s)
    return {"region": region, "device_id": device, "seconds": seen}


def _checks(
    aws: dict[str, Any], names: dict[str, str], redis_url: str, state_dir: Path, device: str, region: str
) -> dict[str, Callable[[], bool]]:
    """Whether each store holds the probe's reading now."""
    cache = redis.Redis.from_url(redis_url, decode_responses=True)
    staged = _StagedLines(aws["s3"], names["StagingBucket"], f"{STAGED_PREFIX}/origin={region}/")
    snapshot = reader(state_dir / files.WAREHOUSE_SNAPSHOT)
    return {
        "table": lambda: bool(
            aws["dynamodb"].query(
                TableName=names["ReadingsTable"],
                KeyConditionExpression="pk = :pk AND begins_with(sk, :r)",
                ExpressionAttributeValues={":pk": {"S": device_pk(device)}, ":r": {"S": "R#"}},
            )["Items"]
        ),
        "cache": lambda: bool(cache.exists(CacheWriter(cache).device_key(device))),
        "staging": lambda: staged.holds(device),
        "warehouse": lambda: bool(snapshot.query(f"SELECT 1 FROM readings WHERE device_id = '{device}'")),  # noqa: S608
    }


class _StagedLines:
    """Staged objects under a prefix, each read once, searched for a device's line."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.read = set(self._keys())  # staged before the probe: it cannot be in them

    def _keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def holds(self, device: str) -> bool:
        for key in [k for k in self._keys() if k not in self.read]:
            self.read.add(key)
            body = gzip.decompress(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            if any(json.loads(line)["device_id"] == device for line in body.splitlines()):
                return True
        return False


def line(seconds: dict[str, float | None]) -> str:
    """The demo's summary line."""
    labels = {"table": "table", "cache": "Redis", "staging": "S3 staging", "warehouse": "warehouse snapshot"}
    return "stage latency (one reading, PutRecord -> visible)  " + "   ".join(
        f"{labels[stage]} {'not seen' if s is None else f'{s} s'}" for stage, s in seconds.items()
    )
