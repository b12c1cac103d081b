"""CacheUpdaterFunction: the table's stream (every write, local and replicated) -> what readers see, kept current.

Two purposes share this function and its one event source mapping, since AWS advises at most two readers per
DynamoDB stream shard (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html) and the stager is the other:

- the cache (``devicepipe.cache``): reading inserts and modifications -> Redis latest-per-device, by a Lua
  compare-and-set;
- the LATEST repair (``devicepipe.repair``): LATEST modifications that cross-region last writer wins moved back
  -> the newer image written back under the ingest's condition.

Both read the batch through one decoding (``devicepipe.streams``); a record neither can use (no ``dynamodb``
section, binary or set attributes, no ``device_id``, a ``ts`` that is no stored time) is quarantined with its reason
(S3, stage ``cache-updater``) and not retried, and the batch goes on.

Each purpose runs over its own records on every attempt and reports only its own records in
``batchItemFailures``: Redis down fails the reading records, a repair write that keeps failing its LATEST record,
a quarantine write that fails the record it was for.
The repair runs in a thread of its own beside the cache, so a Redis outage (timeouts, retries) neither stops nor
delays it. Lambda checkpoints before the lowest reported record and replays every record after it, so both
purposes are idempotent: the compare-and-set ignores what is not newer, and the conditional put refuses it.

A Redis failure is waited out inside the invocation first: jittered exponential backoff, as long as the function's
remaining time allows one more attempt and the response (``CACHE_RESERVE_MS``), and only then are the reading
records reported. Lambda may retry a stream batch at once, so without the waits the mapping's retries were spent
in milliseconds when connections were refused, and the batch went to the on-failure queue; with them the retries
outlast an ElastiCache Multi-AZ failover (docs/deploy.md, "Redis failover").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from devicepipe.cache import CacheUnavailable, CacheWriter, connect, is_cached, newest_per_device
from devicepipe.config import CacheSettings, QuarantineSettings, RepairSettings
from devicepipe.dynamo import DynamoWriter, write_client
from devicepipe.observability import logger, metrics, tracer
from devicepipe.quarantine import S3Quarantine, quarantine_stream, stream_quarantine
from devicepipe.repair import Regression, RepairResult, regressions_in, restore
from devicepipe.retry import Backoff, Deadline, Retrier
from devicepipe.streams import Change, Rejected, decode

#: The repair's own thread, so that it runs beside the cache whatever Redis does.
_REPAIRS = ThreadPoolExecutor(1, thread_name_prefix="latest-repair")
#: Time kept back from the Redis waits: one more attempt at its slowest (the client's connect and socket timeouts,
#: 2 s each, tried twice) and the response to Lambda. With the template's 30 s timeout, 20 s of waiting per
#: invocation; times the mapping's 11 invocations (MaximumRetryAttempts 10), minutes.
CACHE_RESERVE_MS = 10_000
#: Pauses between Redis attempts: full jitter, 0.25 s doubling up to 4 s (the attempts count is bounded by time).
CACHE_BACKOFF = Backoff(base_s=0.25, cap_s=4.0, max_attempts=1_000)
#: Redis retries of its own: one immediate reconnect (a connection that died while the container was frozen);
#: the backoff above does the waiting, so that an attempt stays short and the deadline holds.
REDIS_RETRIES = 1
_sleep: Callable[[float], None] = time.sleep
STAGE = "cache-updater"


@cache
def _writer() -> CacheWriter:
    """Settings and the Redis connection pool, once per container (redis-py reconnects after a freeze)."""
    settings = CacheSettings.from_env()
    secrets = boto3.client("secretsmanager") if settings.redis_auth_secret_arn else None
    client = connect(settings, secrets, retries=REDIS_RETRIES)
    return CacheWriter(client, settings.key_prefix, settings.retention_days * 86_400)


@cache
def _repairer() -> tuple[DynamoWriter, Deadline]:
    """The DynamoDB writer of the LATEST repair, once per container (created on the first regression)."""
    settings = RepairSettings.from_env()
    deadline = Deadline(lambda: 2**31)  # replaced per invocation by the context's remaining time
    executor = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="repair")
    writer = DynamoWriter(
        write_client(**repair_client_options(settings)),
        settings.table_name,
        executor,
        Retrier(deadline=deadline),
        settings.max_concurrency,
    )
    return writer, deadline


def repair_client_options(settings: RepairSettings) -> dict[str, Any]:
    """The repair's DynamoDB client ``Config`` options (``make bench`` builds its client with them too)."""
    return {"max_pool_connections": settings.max_concurrency, "retries": {"mode": "standard", "max_attempts": 3}}


@cache
def _quarantine() -> tuple[S3Quarantine, Deadline]:
    """The quarantine's S3 writer, once per container (created on the first record refused)."""
    s3 = boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    return stream_quarantine(s3, QuarantineSettings.from_env(what="CacheUpdaterFunction").bucket)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = decode(event.get("Records", []))
    found = regressions_in(batch.changes)
    repairing = _REPAIRS.submit(_repair, found, context.get_remaining_time_in_millis) if found else None
    try:
        # First: a quarantine write is short, and the cache may wait out Redis until the deadline.
        quarantine_failed = _quarantine_rejected(batch.rejected, context.get_remaining_time_in_millis)
        deadline = Deadline(context.get_remaining_time_in_millis, CACHE_RESERVE_MS)
        cache_failed = _update_cache(batch.changes, len(batch.sequence_numbers), deadline)
    finally:
        # Waited for even when the cache raised: the repair is written on this attempt whatever the cache did.
        repaired = repairing.result() if repairing else RepairResult()
        _report_repair(repaired, len(batch.sequence_numbers))
    return batch.response(cache_failed | set(repaired.failed) | quarantine_failed)


def _quarantine_rejected(rejected: Sequence[Rejected], remaining_ms: Callable[[], int]) -> set[str]:
    """Quarantine the records no purpose can use; the sequence numbers whose quarantine write failed."""
    if not rejected:
        return set()
    store, deadline = _quarantine()
    deadline.remaining_ms = remaining_ms
    failed = quarantine_stream(store, STAGE, rejected)
    metrics.add_metric("Quarantined", MetricUnit.Count, len(rejected) - len(failed))
    metrics.add_metric("QuarantineFailures", MetricUnit.Count, len(failed))
    return failed


def _update_cache(batch: Sequence[Change], records: int, deadline: Deadline) -> set[str]:
    """Apply the batch's readings to Redis, retrying with backoff while the deadline allows; the sequence numbers
    to retry (the reading records) if Redis is still failing then."""
    updates = newest_per_device(batch)
    retries = 0
    while True:
        try:
            applied = _writer().apply(updates) if updates else 0
            break
        except CacheUnavailable as exc:
            wait = CACHE_BACKOFF.delay(retries)
            if retries + 1 < CACHE_BACKOFF.max_attempts and deadline.allows(wait):
                if not retries:
                    logger.warning("cache unavailable; retrying within the invocation", extra={"error": str(exc)})
                metrics.add_metric("CacheRetries", MetricUnit.Count, 1)
                _sleep(wait)
                retries += 1
                continue
            # Nothing is lost: the reading records go back to Lambda, which retries them (updates are idempotent).
            mine = {c.sequence_number for c in batch if is_cached(c)}
            logger.error(
                "cache unavailable; its records left for retry",
                extra={"error": str(exc), "records": len(mine), "retries": retries},
            )
            metrics.add_metric("CacheFailures", MetricUnit.Count, 1)
            return mine
    metrics.add_metric("StreamRecords", MetricUnit.Count, records)
    metrics.add_metric("CacheUpdates", MetricUnit.Count, applied)
    metrics.add_metric("CacheStale", MetricUnit.Count, len(updates) - applied)
    logger.info(
        "cache updated",
        extra={"records": records, "devices": len(updates), "applied": applied, "retries": retries},
    )
    return set()


def _repair(found: Sequence[Regression], remaining_ms: Callable[[], int]) -> RepairResult:
    writer, deadline = _repairer()
    deadline.remaining_ms = remaining_ms
    return restore(writer, found)


def _report_repair(result: RepairResult, records: int) -> None:
    metrics.add_metric("LatestRegressions", MetricUnit.Count, result.regressions)
    metrics.add_metric("LatestRepaired", MetricUnit.Count, result.repaired)
    metrics.add_metric("LatestRepairFailures", MetricUnit.Count, len(result.failed))
    if result.regressions:
        logger.info(
            "LATEST regressions repaired",
            extra={
                "records": records,
                "regressions": result.regressions,
                "repaired": result.repaired,
                "already_newer": result.already_newer,
                "failed": len(result.failed),
            },
        )
