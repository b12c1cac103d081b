"""template.yaml's dashboard is generated from devicepipe_tools/dashboard.py, and shows only metrics that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from devicepipe_tools import dashboard
from devicepipe_tools.template import ROOT, resource

#: The AWS metrics the dashboard may show, by namespace, from each service's CloudWatch metrics page.
AWS_METRICS = {
    # https://docs.aws.amazon.com/streams/latest/dev/monitoring-with-cloudwatch.html
    "AWS/Kinesis": {"IncomingRecords"},
    # https://docs.aws.amazon.com/lambda/latest/dg/monitoring-metrics-types.html
    "AWS/Lambda": {"IteratorAge", "Errors", "Throttles"},
    # https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/metrics-dimensions.html
    "AWS/DynamoDB": {"ReplicationLatency", "WriteThrottleEvents"},
    # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-available-cloudwatch-metrics.html
    "AWS/SQS": {"ApproximateNumberOfMessagesVisible"},
    # https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/Aurora.AuroraMonitoring.Metrics.html
    "AWS/RDS": {"DatabaseConnections", "AuroraReplicaLag", "AuroraGlobalDBReplicationLag"},
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-metrics.html
    "AWS/ApiGateway": {"Count", "4xx", "5xx", "Latency"},
}


def sub(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The dashboard's !Sub: its body string and its own variables."""
    value = resource(template, "Dashboard")["Properties"]["DashboardBody"]["Fn::Sub"]
    return (value[0], value[1]) if isinstance(value, list) else (value, {})


def test_the_templates_body_is_the_generated_one(template: dict[str, Any]) -> None:
    body, _ = sub(template)
    assert body == dashboard.body_json(), "run `python -m devicepipe_tools.dashboard --write`"


def test_every_variable_is_a_resource_a_parameter_a_pseudo_parameter_or_defined_beside_it(
    template: dict[str, Any],
) -> None:
    body, variables = sub(template)
    assert set(variables) == set(dashboard.SUB_VARIABLES)
    known = set(template["Resources"]) | set(template["Parameters"]) | set(variables)
    for name in re.findall(r"\$\{([^}]+)\}", body):
        assert name.startswith("AWS::") or name.split(".")[0] in known, name


def emitted(app: Path) -> set[str]:
    """The names a function's handler gives ``metrics.add_metric`` (its service-level metrics): literals, both sides
    of a conditional, and the values of a variable passed instead."""
    tree = ast.parse(app.read_text())
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)

    def names(expr: ast.expr) -> set[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.IfExp):
            return names(expr.body) | names(expr.orelse)
        if isinstance(expr, ast.Name):
            return {n for value in assigned.get(expr.id, []) for n in names(value)}
        return set()

    return {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_metric"
        for name in names(node.args[0] if node.args else node.keywords[0].value)
    }


def services(template: dict[str, Any]) -> dict[str, set[str]]:
    """Each function's POWERTOOLS_SERVICE_NAME (the ``service`` dimension) -> the metric names its code emits."""
    out: dict[str, set[str]] = {}
    for spec in template["Resources"].values():
        props = spec.get("Properties", {})
        service = props.get("Environment", {}).get("Variables", {}).get("POWERTOOLS_SERVICE_NAME")
        if spec["Type"] == "AWS::Serverless::Function" and service:
            out.setdefault(service, set()).update(emitted(ROOT / props["CodeUri"] / "app.py"))
    return out


def test_emitted_names_are_found_in_the_handlers(template: dict[str, Any]) -> None:
    found = services(template)
    assert {"ReadingsWritten", "Retries"} <= found["ingest"]
    assert {"CacheHits", "CacheMisses", "CacheErrors", "ReadLatency"} <= found["read-api"]  # a variable, a ?:


def test_every_metric_shown_is_emitted_by_its_service_or_is_an_aws_metric(template: dict[str, Any]) -> None:
    _, variables = sub(template)
    by_service = services(template)
    shown = [m for w in dashboard.WIDGETS for m in w.metrics if isinstance(m, dashboard.Metric)]
    assert len(shown) > 30
    for metric in shown:
        if metric.namespace == dashboard.NAMESPACE:
            assert [d for d, _ in metric.dimensions] == ["service"], metric
            service = metric.dimensions[0][1]
            assert metric.name in by_service.get(service, set()), f"{service} emits no {metric.name}"
        else:
            names = {metric.name}
            if variable := re.fullmatch(r"\$\{(\w+)\}", metric.name):  # a metric chosen per region
                names = set(variables[variable[1]]["Fn::If"][1:])
            assert names <= AWS_METRICS.get(metric.namespace, set()), metric


def test_widgets_are_numbered_in_order_on_a_grid_without_overlap() -> None:
    widgets = dashboard.body()["widgets"]
    assert [int(w["properties"]["title"].split()[0]) for w in widgets] == list(range(1, len(widgets) + 1))
    cells = [
        (x, y) for w in widgets for x in range(w["x"], w["x"] + w["width"]) for y in range(w["y"], w["y"] + w["height"])
    ]
    assert len(cells) == len(set(cells)) and max(x for x, _ in cells) < 24


def test_write_rewrites_only_the_body_line(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    before = (ROOT / "template.yaml").read_text()
    lines = before.splitlines(keepends=True)
    body_line = next(i for i, ln in enumerate(lines) if ln.strip() == "DashboardBody: !Sub") + 1
    lines[body_line] = "        - '{\"widgets\":[]}'\n"
    template.write_text("".join(lines))
    assert dashboard.write(template) is True
    assert template.read_text() == before
    assert dashboard.write(template) is False
