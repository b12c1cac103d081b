"""LatestRepairFunction: DynamoDB Streams (LATEST changes) -> LATEST items moved back by replication restored."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from devicepipe.config import RepairSettings
from devicepipe.dynamo import DynamoWriter
from devicepipe.observability import logger, metrics, tracer
from devicepipe.repair import repair
from devicepipe.retry import Deadline, Retrier


@cache
def _writer() -> tuple[DynamoWriter, Deadline]:
    settings = RepairSettings.from_env()
    config = Config(max_pool_connections=settings.max_concurrency, retries={"mode": "standard", "max_attempts": 3})
    deadline = Deadline(lambda: 2**31)  # replaced per invocation by the context's remaining time
    executor = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="repair")
    writer = DynamoWriter(
        boto3.client("dynamodb", config=config),
        settings.table_name,
        executor,
        Retrier(deadline=deadline),
        settings.max_concurrency,
    )
    return writer, deadline


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records", [])
    writer, deadline = _writer()
    deadline.remaining_ms = context.get_remaining_time_in_millis
    result = repair(writer, records)
    metrics.add_metric("LatestRegressions", MetricUnit.Count, result.regressions)
    metrics.add_metric("LatestRepaired", MetricUnit.Count, result.repaired)
    metrics.add_metric("LatestRepairFailures", MetricUnit.Count, len(result.failed))
    if result.regressions:
        logger.info(
            "LATEST regressions repaired",
            extra={
                "records": len(records),
                "regressions": result.regressions,
                "repaired": result.repaired,
                "already_newer": result.already_newer,
                "failed": len(result.failed),
            },
        )
    return {"batchItemFailures": [{"itemIdentifier": s} for s in result.failed]}
