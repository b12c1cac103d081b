"""LoaderFunction: staged objects -> Redshift (Data API), on a schedule or for a backfill.

Event: the EventBridge schedule's (the cycle lists each origin from its watermark hour), or
``{"prefix": "readings/origin=us-east-1/dt=2026-11-02/"}`` to load what is not loaded yet under one prefix by
hand (a backfill: it lists the whole prefix, e.g. for objects that arrived later than ``LATE_ARRIVAL_S``).
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from devicepipe.config import LoaderSettings
from devicepipe.loader import Loader, Source
from devicepipe.observability import logger, metrics, tracer
from devicepipe.retry import Deadline
from devicepipe.staging import PREFIX
from devicepipe.warehouse import RedshiftDataApi


@cache
def _loader() -> tuple[Loader, Deadline]:
    settings = LoaderSettings.from_env()
    # Keep a minute in hand: a statement still running then is cancelled and its transaction rolled back.
    deadline = Deadline(lambda: 2**31, reserve_ms=60_000)
    warehouse = RedshiftDataApi(boto3.client("redshift-data"), settings.workgroup, settings.database, deadline)
    loader = Loader(
        boto3.client("s3"),
        warehouse,
        Source(settings.staging_bucket, settings.region),  # both regions' readings: the other's are replicated in
        settings.manifest_bucket,
        settings.copy_role_arn,
        settings.max_objects,
        settings.max_bytes,
        region=settings.region,
        sizing=settings.sizing,
        deadline=deadline,  # the statements' deadline: joining a manifest that would not fit waits a cycle
    )
    return loader, deadline


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    prefix = event.get("prefix") or None
    if prefix is not None and not str(prefix).startswith(f"{PREFIX}/"):
        raise ValueError(f"backfill prefix must start with {PREFIX}/, got {prefix!r}")
    loader, deadline = _loader()
    deadline.remaining_ms = context.get_remaining_time_in_millis
    report = loader.run(prefix)
    metrics.add_metric("ObjectsLoaded", MetricUnit.Count, report.loaded_objects)
    metrics.add_metric("CopyStatements", MetricUnit.Count, report.copies)
    # Files the committed COPYs read (joined from staged objects: devicepipe.compaction) and their bytes.
    metrics.add_metric("CopyFiles", MetricUnit.Count, report.copy_files)
    metrics.add_metric("CopyBytes", MetricUnit.Bytes, report.copy_bytes)
    # Bad data moved aside (alarmed: `devicepipe loads list` shows each object with the warehouse's reason).
    metrics.add_metric("ObjectsQuarantined", MetricUnit.Count, len(report.failed))
    # Permanent failures pinned on no object (a permission or SQL error): nothing quarantined, objects left pending.
    metrics.add_metric("LoadFailures", MetricUnit.Count, len(report.unattributed))
    metrics.add_metric("LoadDeferred", MetricUnit.Count, int(bool(report.deferred)))
    left = report.pending_objects - report.loaded_objects - len(report.failed)
    metrics.add_metric("ObjectsPending", MetricUnit.Count, left)
    # Load lag: how long the oldest staged reading has waited for the warehouse (alarmed on in the template).
    metrics.add_metric("OldestPendingAgeSeconds", MetricUnit.Seconds, report.oldest_pending_age_s)
    logger.info("load cycle done", extra=asdict(report))
    return asdict(report)
