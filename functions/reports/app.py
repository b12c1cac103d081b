"""ReportFunction: branch reports from the warehouse and the registry, stored in S3 and announced on SNS.

Event: the EventBridge schedule's (every branch's due periods), or, on demand or for a backfill,
``{"period": "2026-11-01", "branches": ["branch-001"]}`` (``branches`` optional: every registered branch).

A bad request is answered ``{"ok": false, "error": ...}`` (retrying would not mend it). A run in which some
reports failed delivers the others, then raises, so that the schedule's retry and the on-failure destination see
it; the retry finds the delivered ones unchanged and sends nothing for them again.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from devicepipe.config import RegistrySettings, ReportSettings
from devicepipe.delivery import S3_CONFIG, DeliverySummary
from devicepipe.observability import logger, metrics, tracer
from devicepipe.registry import Registry, read_registry
from devicepipe.report_run import BadRequest, Runtime, parse_request, run
from devicepipe.retry import Deadline
from devicepipe.warehouse import RedshiftDataApi


class ReportRunFailed(RuntimeError):
    """Some reports were not delivered (the others were)."""


@cache
def _runtime() -> Runtime:
    settings = ReportSettings.from_env()
    # A minute in hand, as the loader keeps: a statement still running then is cancelled and rolled back.
    deadline = Deadline(lambda: 2**31, reserve_ms=60_000)
    warehouse = RedshiftDataApi(boto3.client("redshift-data"), settings.workgroup, settings.database, deadline)
    s3 = boto3.client("s3", config=S3_CONFIG)
    return Runtime(settings, warehouse, s3, boto3.client("sns"), deadline, load_registry)


def load_registry() -> Registry:
    """This region's registry, read afresh each run."""
    return read_registry(RegistrySettings.from_env())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    started, now = time.perf_counter(), datetime.now(UTC)
    try:
        request = parse_request(event, now)
        rt = _runtime()
        rt.deadline.remaining_ms = context.get_remaining_time_in_millis
        summary, periods = run(rt, request, now, context.aws_request_id)
    except BadRequest as exc:
        logger.warning("bad report request", extra={"error": str(exc)})
        metrics.add_metric("ReportRequestsRefused", MetricUnit.Count, 1)
        return {"ok": False, "error": str(exc)}
    return _finish(summary, periods, time.perf_counter() - started)


def _finish(summary: DeliverySummary, periods: int, seconds: float) -> dict[str, Any]:
    """Count and log the run; raise after it when reports failed."""
    metrics.add_metric("ReportsWritten", MetricUnit.Count, summary.written)
    metrics.add_metric("ReportsUnchanged", MetricUnit.Count, summary.unchanged)
    metrics.add_metric("ReportsNotified", MetricUnit.Count, summary.notified)
    metrics.add_metric("ReportFailures", MetricUnit.Count, summary.failed)
    metrics.add_metric("ReportRunSeconds", MetricUnit.Seconds, round(seconds, 3))
    result = {"ok": not summary.failures, "reports": periods, **asdict(summary)}
    logger.info("report run done", extra=result)
    if summary.failures:
        shown = "; ".join(f"{f.branch_id} {f.period}: {f.reason}" for f in summary.failures[:5])
        raise ReportRunFailed(f"{summary.failed} of {periods} reports not delivered (the rest were): {shown}")
    return result
