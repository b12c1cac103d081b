"""The CloudWatch dashboard of template.yaml (resource ``Dashboard``), as data: the template holds its body as one
generated JSON line, which `python -m devicepipe_tools.dashboard --write` rewrites from ``WIDGETS``.
tests/unit/test_dashboard.py fails when the two differ, or when a widget shows a metric no function emits.

The body is the first item of the resource's ``!Sub``: ``${Name}`` is a resource, a parameter, a pseudo parameter
or one of ``SUB_VARIABLES``, which the template defines beside the body (they need ``!If``, written in YAML there).
Rows are written out in full (no CloudWatch "." or "..." shorthand): each says what it shows.
Structure: https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/CloudWatch-Dashboard-Body-Structure.html
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicepipe_tools.template import TEMPLATE

NAMESPACE = "devicepipe"  # POWERTOOLS_METRICS_NAMESPACE, Globals in template.yaml
#: The body's own !Sub variables, defined beside it in template.yaml.
SUB_VARIABLES = ("OtherRegion", "ReportFunctionName", "ReportDeadLetterQueueName", "AuroraLagMetric")
COLUMNS, WIDTH, HEIGHT = 3, 8, 6  # three widgets a row on the 24-column grid


@dataclass(frozen=True)
class Metric:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...] = ()
    options: dict[str, str] = field(default_factory=dict)  # stat, yAxis, label, id: over the widget's

    def row(self) -> list[Any]:
        names = [self.namespace, self.name, *(v for d in self.dimensions for v in d)]
        return [*names, self.options] if self.options else names


@dataclass(frozen=True)
class Expression:
    """Metric math over the widget's metrics by their ``id``."""

    expression: str
    label: str
    id: str
    y_axis: str = "left"

    def row(self) -> list[Any]:
        return [{"expression": self.expression, "label": self.label, "id": self.id, "yAxis": self.y_axis}]


@dataclass(frozen=True)
class Widget:
    title: str
    stat: str
    metrics: tuple[Metric | Expression, ...]
    period: int = 60


def ours(name: str, service: str, **options: str) -> Metric:
    """A metric a function emits with Powertools (dimension ``service``: its POWERTOOLS_SERVICE_NAME)."""
    return Metric(NAMESPACE, name, (("service", service),), options)


def aws(namespace: str, name: str, *dimensions: tuple[str, str], **options: str) -> Metric:
    return Metric(f"AWS/{namespace}", name, dimensions, options)


def per_function(name: str, *functions: str) -> tuple[Metric, ...]:
    return tuple(aws("Lambda", name, ("FunctionName", "${" + f + "}")) for f in functions)


def per_queue(*queues: str, **options: str) -> tuple[Metric, ...]:
    return tuple(aws("SQS", "ApproximateNumberOfMessagesVisible", ("QueueName", q), **options) for q in queues)


STREAM_CONSUMERS = ("IngestFunction", "CacheUpdaterFunction", "StagerFunction")
READ_API = (("ApiId", "${ReadApi}"), ("Stage", "$default"))  # $default: the stage's name, not a !Sub variable
RIGHT = "right"

#: The flow stage by stage (readings in -> stored -> cached / staged -> loaded -> reported, with what was given
#: up), then the read side; numbered in this order, three a row.
WIDGETS = (
    Widget(
        "Kinesis: readings in",
        "Sum",
        (aws("Kinesis", "IncomingRecords", ("StreamName", "${ReadingsStream}")),),
    ),
    Widget(
        "Ingest: written / quarantined / failed",
        "Sum",
        tuple(ours(name, "ingest") for name in ("ReadingsWritten", "Quarantined", "RecordsFailed", "Retries")),
    ),
    Widget("Stream consumers: iterator age (ms)", "Maximum", per_function("IteratorAge", *STREAM_CONSUMERS)),
    Widget(
        "Cache: updates / stale / failures",
        "Sum",
        tuple(ours(name, "cache-updater") for name in ("CacheUpdates", "CacheStale", "CacheFailures")),
    ),
    Widget(
        "Staging: readings staged / failures",
        "Sum",
        (ours("ReadingsStaged", "stager"), ours("StagingFailures", "stager")),
    ),
    Widget(
        "Warehouse: objects loaded / load lag (s)",
        "Sum",
        (
            ours("ObjectsLoaded", "loader"),
            ours("OldestPendingAgeSeconds", "loader", stat="Maximum", yAxis=RIGHT),
            ours("LoadFailures", "loader"),
            ours("ObjectsQuarantined", "loader"),
        ),
    ),
    Widget(
        "Global table: replication latency (ms) / throttles, LATEST repairs",
        "Sum",
        (
            aws(
                "DynamoDB",
                "ReplicationLatency",
                ("TableName", "${TableName}"),
                ("ReceivingRegion", "${OtherRegion}"),
                stat="Maximum",
            ),
            aws("DynamoDB", "WriteThrottleEvents", ("TableName", "${TableName}"), yAxis=RIGHT),
            ours("LatestRegressions", "cache-updater", yAxis=RIGHT),
            ours("LatestRepairFailures", "cache-updater", yAxis=RIGHT),
        ),
    ),
    Widget(
        "Given up: on-failure queues",
        "Maximum",
        per_queue(
            "${IngestFailureQueue.QueueName}", "${CacheFailureQueue.QueueName}", "${StagerFailureQueue.QueueName}"
        ),
    ),
    Widget(
        "Functions: errors and throttles",
        "Sum",
        per_function("Errors", *STREAM_CONSUMERS) + per_function("Throttles", *STREAM_CONSUMERS),
    ),
    Widget(
        "Reports: written / unchanged / notified / failed (primary)",
        "Sum",
        (
            ours("ReportsWritten", "reports"),
            ours("ReportsUnchanged", "reports"),
            ours("ReportsNotified", "reports"),
            ours("ReportFailures", "reports", yAxis=RIGHT),
        ),
        period=3600,
    ),
    Widget(
        "Reports: run time (s), errors, dead-letter queue (primary)",
        "Maximum",
        (
            ours("ReportRunSeconds", "reports"),
            aws("Lambda", "Errors", ("FunctionName", "${ReportFunctionName}"), stat="Sum", yAxis=RIGHT),
            *per_queue("${ReportDeadLetterQueueName}", yAxis=RIGHT),
        ),
        period=3600,
    ),
    Widget(
        "Registry (Aurora): connections / replica lag (ms)",
        "Maximum",
        (
            aws("RDS", "DatabaseConnections", ("DBClusterIdentifier", "${AuroraCluster}")),
            aws("RDS", "${AuroraLagMetric}", ("DBClusterIdentifier", "${AuroraCluster}"), yAxis=RIGHT),
        ),
    ),
    Widget(
        "Read API: requests / 4xx / 5xx",
        "Sum",
        tuple(aws("ApiGateway", name, *READ_API) for name in ("Count", "4xx", "5xx")),
    ),
    Widget(
        "Read API: latency p50 / p99 (ms)",
        "p50",
        (
            aws("ApiGateway", "Latency", *READ_API),
            aws("ApiGateway", "Latency", *READ_API, stat="p99"),
            ours("ReadLatency", "read-api", stat="p99", label="ReadLatency p99 (function)"),
        ),
    ),
    Widget(
        "Read API cache: hits / misses / errors, hit ratio (%)",
        "Sum",
        (
            ours("CacheHits", "read-api", id="hits"),
            ours("CacheMisses", "read-api", id="misses"),
            ours("CacheErrors", "read-api", id="errors"),
            Expression("100 * hits / (hits + misses)", "hit ratio (%)", "ratio", y_axis=RIGHT),
        ),
    ),
)


def body(widgets: tuple[Widget, ...] = WIDGETS) -> dict[str, Any]:
    return {
        "widgets": [
            {
                "type": "metric",
                "x": (i % COLUMNS) * WIDTH,
                "y": (i // COLUMNS) * HEIGHT,
                "width": WIDTH,
                "height": HEIGHT,
                "properties": {
                    "title": f"{i + 1} {w.title}",
                    "region": "${AWS::Region}",
                    "stat": w.stat,
                    "period": w.period,
                    "view": "timeSeries",
                    "metrics": [m.row() for m in w.metrics],
                },
            }
            for i, w in enumerate(widgets)
        ]
    }


def body_json(widgets: tuple[Widget, ...] = WIDGETS) -> str:
    """The body as the template holds it: one line of compact JSON."""
    return json.dumps(body(widgets), separators=(",", ":"))


def _body_line(lines: list[str]) -> int:
    """The index of the line holding the body: the first item of the Dashboard resource's DashboardBody !Sub."""
    start = lines.index("  Dashboard:\n")
    sub = next(i for i in range(start, len(lines)) if lines[i].strip() == "DashboardBody: !Sub")
    if not lines[sub + 1].startswith("        - '"):
        raise ValueError(f"{TEMPLATE.name}:{sub + 2}: expected the body as a single-quoted string")
    return sub + 1


def write(path: Path = TEMPLATE) -> bool:
    """Rewrite the body's line of ``path`` from ``WIDGETS``; whether it changed. Nothing else of the file is
    touched (others edit the rest of the template)."""
    lines = path.read_text().splitlines(keepends=True)
    index = _body_line(lines)
    line = "        - '" + body_json().replace("'", "''") + "'\n"  # YAML single quotes: ' doubled
    if lines[index] == line:
        return False
    lines[index] = line
    path.write_text("".join(lines))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="template.yaml's CloudWatch dashboard, from devicepipe_tools.dashboard"
    )
    parser.add_argument("--write", action="store_true", help="rewrite the body in template.yaml")
    args = parser.parse_args(argv)
    if args.write:
        print(f"{TEMPLATE.name}: dashboard body {'rewritten' if write() else 'unchanged'}")
    else:
        print(json.dumps(body(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
