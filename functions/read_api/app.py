"""ReadApiFunction: the read API (docs/read-api.md) behind each region's HTTP API."""

from __future__ import annotations

import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from devicepipe import __version__
from devicepipe.api import build_app
from devicepipe.cache import CacheWriter, connect
from devicepipe.config import ReadApiSettings
from devicepipe.observability import logger, metrics, tracer
from devicepipe.reads import Reads

_PAGE = Path(__file__).with_name("dashboard.html")
#: Lookups that count towards the hit ratio (a branch page's readings follow its branch view's lookup).
_RATIO_KINDS = frozenset({"latest", "branch", "branches"})
#: Counted per route only: a report's few daily reads would pull the readings' hit ratio (and its alarm) down.
_ROUTE_ONLY_KINDS = frozenset({"report"})


@cache
def _settings() -> ReadApiSettings:
    return ReadApiSettings.from_env()


@cache
def _reads() -> Reads:
    """Clients once per container: short timeouts and few retries, since a client waits on every call."""
    settings = _settings()
    config = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=1, read_timeout=3)
    secrets = boto3.client("secretsmanager", config=config) if settings.cache.redis_auth_secret_arn else None
    writer = CacheWriter(
        connect(settings.cache, secrets, timeout_s=0.5, retries=1),
        settings.cache.key_prefix,
        settings.cache.retention_days * 86_400,
    )
    return Reads(
        writer,
        boto3.client("dynamodb", config=config),
        settings.cache.table_name,
        on_lookup=_count,
        s3=boto3.client("s3", config=config) if settings.reports_bucket else None,
        reports_bucket=settings.reports_bucket,
    )


def _count(kind: str, outcome: str) -> None:
    """Cache outcomes: hits and misses per service (what the hit-ratio alarm reads) and per route kind."""
    if outcome == "error":
        metrics.add_metric("CacheFillErrors" if kind == "fill" else "CacheErrors", MetricUnit.Count, 1)
        return
    if kind not in _RATIO_KINDS | _ROUTE_ONLY_KINDS:
        return
    name = "CacheHits" if outcome == "hit" else "CacheMisses"
    if kind in _RATIO_KINDS:
        metrics.add_metric(name, MetricUnit.Count, 1)
    with single_metric(name, MetricUnit.Count, 1, namespace=metrics.namespace) as one:
        one.add_dimension("service", metrics.service or "read-api")
        one.add_dimension("route", kind)


@cache
def _page() -> str:
    return _PAGE.read_text() if _PAGE.exists() else "<!doctype html><title>devicepipe</title><p>No dashboard."


app = build_app(
    lambda: _reads(),  # noqa: PLW0108 - looked up per call, so tests and benchmarks can put theirs in its place
    # Lambda sets AWS_REGION: no botocore session is built at import just to read it (one costs about 5 ms).
    region=os.environ.get("AWS_REGION") or boto3.session.Session().region_name or "",
    version=__version__,
    stale_after_s=lambda: _settings().stale_after_s,
    dashboard_html=_page,
)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    started = time.perf_counter()
    response: dict[str, Any] = app.resolve(event, context)
    status = int(response.get("statusCode", 200))
    metrics.add_metric("ReadLatency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000)
    if status >= 500:
        metrics.add_metric("ServerErrors", MetricUnit.Count, 1)
    elif status >= 400:
        metrics.add_metric("ClientErrors", MetricUnit.Count, 1)
    return response
