"""IngestFunction: Kinesis batch -> DynamoDB global table (reading items and LATEST per device)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from devicepipe.config import IngestSettings
from devicepipe.dynamo import write_client
from devicepipe.ingest import Ingestor, IngestReport, build_ingestor
from devicepipe.observability import logger, metrics, tracer
from devicepipe.retry import Deadline, Retrier


@cache
def _ingestor() -> tuple[Ingestor, Deadline]:
    """Settings, clients and the thread pool, built once per container (on first use, so a missing
    variable surfaces as one clear ConfigError in the log rather than an import failure)."""
    settings = IngestSettings.from_env()
    options = client_options(settings)
    executor = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="ingest")
    deadline = Deadline(lambda: 2**31)  # replaced per invocation by the context's remaining time
    ingestor = build_ingestor(
        settings,
        write_client(**options),
        boto3.client("s3", config=Config(**options)),
        executor,
        Retrier(deadline=deadline),
    )
    return ingestor, deadline


def client_options(settings: IngestSettings) -> dict[str, Any]:
    """The AWS clients' ``Config`` options (``make bench`` builds its clients with them too)."""
    return {
        "max_pool_connections": settings.max_concurrency,
        "retries": {"mode": "standard", "max_attempts": 3},
        "connect_timeout": 3,
        "read_timeout": 10,
    }


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    ingestor, deadline = _ingestor()
    deadline.remaining_ms = context.get_remaining_time_in_millis
    report = ingestor.ingest(event.get("Records", []))
    _publish(report)
    return report.response()


def _publish(report: IngestReport) -> None:
    metrics.add_metric("RecordsIn", MetricUnit.Count, report.records)
    metrics.add_metric("ReadingsWritten", MetricUnit.Count, report.written)
    metrics.add_metric("Quarantined", MetricUnit.Count, report.quarantined)
    metrics.add_metric("Duplicates", MetricUnit.Count, report.duplicates)
    metrics.add_metric("Retries", MetricUnit.Count, report.retries)
    metrics.add_metric("LatestUpdated", MetricUnit.Count, report.latest_updated)
    metrics.add_metric("RecordsFailed", MetricUnit.Count, len(report.failed_sequence_numbers))
    logger.info(
        "batch ingested",
        extra={
            "records": report.records,
            "user_records": report.user_records,
            "written": report.written,
            "quarantined": report.quarantined,
            "duplicates": report.duplicates,
            "latest_updated": report.latest_updated,
            "latest_stale": report.latest_stale,
            "retries": report.retries,
            "dynamodb_calls": report.dynamodb_calls,
            "failed": len(report.failed_sequence_numbers),
        },
    )
