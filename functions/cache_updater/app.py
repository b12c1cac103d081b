"""CacheUpdaterFunction: DynamoDB Streams (every write, local and replicated) -> Redis latest-per-device."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from devicepipe.cache import CacheUnavailable, CacheWriter, connect, newest_per_device
from devicepipe.config import CacheSettings
from devicepipe.observability import logger, metrics, tracer
from devicepipe.streams import changes


@cache
def _writer() -> CacheWriter:
    """Settings and the Redis connection pool, once per container (redis-py reconnects after a freeze)."""
    settings = CacheSettings.from_env()
    secrets = boto3.client("secretsmanager") if settings.redis_auth_secret_arn else None
    return CacheWriter(connect(settings, secrets), settings.key_prefix, settings.retention_days * 86_400)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records", [])
    writer = _writer()
    batch = list(changes(records))
    updates = newest_per_device(batch)
    try:
        applied = writer.apply(updates)
    except CacheUnavailable as exc:
        # Nothing is lost: every record goes back to Lambda, which retries the batch (updates are idempotent).
        logger.error("cache unavailable; batch left for retry", extra={"error": str(exc), "records": len(records)})
        metrics.add_metric("CacheFailures", MetricUnit.Count, 1)
        return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in records]}
    metrics.add_metric("StreamRecords", MetricUnit.Count, len(records))
    metrics.add_metric("CacheUpdates", MetricUnit.Count, applied)
    metrics.add_metric("CacheStale", MetricUnit.Count, len(updates) - applied)
    logger.info("cache updated", extra={"records": len(records), "devices": len(updates), "applied": applied})
    return {"batchItemFailures": []}
