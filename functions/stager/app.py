"""StagerFunction: DynamoDB Streams (own-region readings) -> one gzip JSON-lines object in S3 per batch."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from devicepipe.config import StagerSettings
from devicepipe.observability import logger, metrics, tracer
from devicepipe.retry import Deadline, Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes


@cache
def _stager() -> tuple[Stager, Deadline]:
    settings = StagerSettings.from_env()
    deadline = Deadline(lambda: 2**31)  # replaced per invocation by the context's remaining time
    s3 = boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    return Stager(s3, settings.staging_bucket, settings.region, Retrier(deadline=deadline)), deadline


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records", [])
    stager, deadline = _stager()
    deadline.remaining_ms = context.get_remaining_time_in_millis
    result = stager.stage(list(changes(records)))
    if result.error:
        logger.error("staging failed; batch left for retry", extra={"error": result.error, "key": result.key})
        metrics.add_metric("StagingFailures", MetricUnit.Count, 1)
        return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in records]}
    metrics.add_metric("ReadingsStaged", MetricUnit.Count, result.staged)
    metrics.add_metric("StagedBytes", MetricUnit.Bytes, result.bytes)
    logger.info("batch staged", extra={"staged": result.staged, "skipped": result.skipped, "key": result.key})
    return {"batchItemFailures": []}
