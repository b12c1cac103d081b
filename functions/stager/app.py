"""StagerFunction: DynamoDB Streams (own-region readings) -> one gzip JSON-lines object in S3 per batch.

Records that do not decode (``devicepipe.streams``: no ``dynamodb`` section, binary or set attributes, no
``device_id``, a ``ts`` that is no stored time) are quarantined with their reason (S3, stage ``stager``) and the rest
of the batch is staged, so nothing null or unreadable reaches the warehouse. Any failure, staging or quarantine,
fails the whole batch: Lambda retries the same records, which stage under the same key.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from devicepipe.config import QuarantineSettings, StagerSettings
from devicepipe.observability import logger, metrics, tracer
from devicepipe.quarantine import S3Quarantine, quarantine_stream, stream_quarantine
from devicepipe.retry import Deadline, Retrier
from devicepipe.staging import Stager
from devicepipe.streams import Batch, decode

STAGE = "stager"


@cache
def _s3() -> Any:
    # No client-side parameter validation: our code alone builds these PUTs, and S3 checks them anyway.
    return boto3.client(
        "s3", config=Config(retries={"mode": "standard", "max_attempts": 3}, parameter_validation=False)
    )


@cache
def _stager() -> tuple[Stager, Deadline]:
    settings = StagerSettings.from_env()
    deadline = Deadline(lambda: 2**31)  # replaced per invocation by the context's remaining time
    return Stager(_s3(), settings.staging_bucket, settings.region, Retrier(deadline=deadline)), deadline


@cache
def _quarantine() -> tuple[S3Quarantine, Deadline]:
    """The quarantine's S3 writer, once per container (created on the first record refused)."""
    return stream_quarantine(_s3(), QuarantineSettings.from_env(what="StagerFunction").bucket)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = decode(event.get("Records", []))
    stager, deadline = _stager()
    deadline.remaining_ms = context.get_remaining_time_in_millis
    if _quarantine_failed(batch, context):
        return batch.response(set(batch.sequence_numbers))
    result = stager.stage(batch.changes)
    if result.error:
        logger.error("staging failed; batch left for retry", extra={"error": result.error, "key": result.key})
        metrics.add_metric("StagingFailures", MetricUnit.Count, 1)
        return batch.response(set(batch.sequence_numbers))
    metrics.add_metric("ReadingsStaged", MetricUnit.Count, result.staged)
    metrics.add_metric("StagedBytes", MetricUnit.Bytes, result.bytes)
    logger.info("batch staged", extra={"staged": result.staged, "skipped": result.skipped, "key": result.key})
    return batch.response(set())


def _quarantine_failed(batch: Batch, context: LambdaContext) -> bool:
    """Quarantine the records that do not decode; whether a quarantine write failed."""
    if not batch.rejected:
        return False
    store, deadline = _quarantine()
    deadline.remaining_ms = context.get_remaining_time_in_millis
    failed = quarantine_stream(store, STAGE, batch.rejected)
    metrics.add_metric("Quarantined", MetricUnit.Count, len(batch.rejected) - len(failed))
    if failed:
        logger.error("quarantine failed; batch left for retry", extra={"records": len(failed)})
        metrics.add_metric("QuarantineFailures", MetricUnit.Count, len(failed))
    return bool(failed)
