"""ReportFunction: its settings, its events (schedule, on demand, bad input) and one run through the handler with
the warehouse's part faked (moto S3 in process, a recording SNS: no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devicepipe import report_run
from devicepipe.config import ConfigError, ReportSettings
from devicepipe.delivery import S3_CONFIG, report_key
from devicepipe.registry import Branch, Registry
from devicepipe.retry import Deadline
from devicepipe_tools.events import sample_events
from functions.reports import app
from tests.conftest import FakeLambdaContext
from tests.unit.test_delivery import RecordingSns, a_report

NOW = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
BUCKET = "devicepipe-reports"
ENV = {
    "WORKGROUP_NAME": "wg",
    "DATABASE_NAME": "dev",
    "COPY_ROLE_ARN": "arn:aws:iam::123456789012:role/copy",
    "REPORTS_BUCKET": BUCKET,
    "REPORTS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:reports",
    "AWS_REGION": "us-east-1",
}
REGISTRY = Registry(
    branches=(
        Branch("branch-nyc", "New York", "us-east-1", "America/New_York"),
        Branch("branch-ldn", "London", "eu-west-1", "Europe/London"),
    )
)


# ------------------------------------------------------------------------------------ settings


def test_report_settings_read_with_defaults_in_seconds() -> None:
    s = ReportSettings.from_env(ENV)
    assert (s.reports_bucket, s.topic_arn, s.workgroup) == (BUCKET, ENV["REPORTS_TOPIC_ARN"], "wg")
    assert (s.gap_threshold_s, s.final_after_s, s.link_ttl_s) == (900, 86_400, 3_600)
    s = ReportSettings.from_env(ENV | {"REPORT_GAP_MINUTES": "5", "REPORT_FINAL_AFTER_HOURS": "48"})
    assert (s.gap_threshold_s, s.final_after_s) == (300, 172_800)


def test_report_settings_name_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        ReportSettings.from_env(
            {"AWS_REGION": "us-east-1", "REPORT_LINK_TTL_SECONDS": "604801", "REPORT_GAP_MINUTES": "x"}
        )
    for part in (
        "REPORTS_BUCKET is required",
        "REPORTS_TOPIC_ARN is required",
        "WORKGROUP_NAME is required",
        "REPORT_LINK_TTL_SECONDS must be between 60 and 604800",  # SigV4 links live 7 days at most
        "REPORT_GAP_MINUTES must be an integer",
    ):
        assert part in str(info.value)


# ------------------------------------------------------------------------------------ events


def test_the_sample_events_ask_for_what_they_say() -> None:
    events = sample_events()
    assert report_run.parse_request(events["reports/scheduled.json"], NOW) == report_run.Request()
    assert report_run.parse_request({}, NOW) == report_run.Request()  # EventBridge Scheduler without an input
    assert report_run.parse_request(events["reports/on-demand.json"], NOW) == report_run.Request(
        date(2026, 11, 2), ("branch-nyc",)
    )
    assert report_run.parse_request(events["reports/backfill-every-branch.json"], NOW) == report_run.Request(
        date(2026, 11, 1)
    )
    twice = {"period": "2026-11-02", "branches": ["b-1", "b-2", "b-1"]}
    assert report_run.parse_request(twice, NOW).branches == ("b-1", "b-2")


@pytest.mark.parametrize(
    ("event", "says"),
    [
        ({"period": "2026-02-30"}, "period must be a date YYYY-MM-DD, got '2026-02-30'"),
        ({"period": "20261102"}, "period must be a date YYYY-MM-DD"),
        ({"period": 20261102}, "period must be a date YYYY-MM-DD, got 20261102"),
        ({"branches": ["b-1"]}, "period must be a date"),
        ({"period": "2026-11-05"}, "period 2026-11-05 has not begun in any time zone yet"),
        ({"period": "2026-11-02", "branches": "b-1"}, "branches must be a list of 1 to 1000 branch ids"),
        ({"period": "2026-11-02", "branches": []}, "branches must be a list"),
        ({"period": "2026-11-02", "branches": ["ok", "not ok", 7]}, "got ['not ok', 7]"),
        ({"period": "2026-11-02", "branch": "b-1"}, "unknown field(s) branch: expected period"),
        (["period"], "the event must be a JSON object, got list"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(event: Any, says: str) -> None:
    with pytest.raises(report_run.BadRequest) as info:
        report_run.parse_request(event, NOW)
    assert says in str(info.value)


def test_periods_are_the_schedules_due_ones_or_the_requested_ones_of_known_branches() -> None:
    scheduled = report_run.periods_of(report_run.Request(), REGISTRY, NOW)
    assert ("branch-nyc", date(2026, 11, 2)) in scheduled and ("branch-ldn", date(2026, 11, 2)) in scheduled
    every = report_run.periods_of(report_run.Request(date(2026, 11, 1)), REGISTRY, NOW)
    assert every == [("branch-nyc", date(2026, 11, 1)), ("branch-ldn", date(2026, 11, 1))]
    with pytest.raises(report_run.BadRequest, match="not in the registry: branch-xyz"):
        report_run.periods_of(report_run.Request(date(2026, 11, 1), ("branch-nyc", "branch-xyz")), REGISTRY, NOW)


# ------------------------------------------------------------------------------------ the handler


class Run:
    """The handler's collaborators: moto S3, a recording SNS, a fake compute_reports."""

    def __init__(self, s3: Any, sns: RecordingSns) -> None:
        self.s3, self.sns = s3, sns
        self.asked: list[tuple[str, date]] = []
        self.extracts: list[str] = []

    def compute_reports(self, warehouse: Any, registry: Registry, periods: Sequence[tuple[str, date]], **kw: Any):
        self.asked = list(periods)
        self.extracts.append(kw["put_extract"]("report_devices-run1", b"\x1f\x8b-gzip"))
        assert kw["role_arn"] == ENV["COPY_ROLE_ARN"] and kw["gap_threshold_s"] == 900
        return [a_report(b) | {"period": str(p)} for b, p in periods]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    with mock_aws():
        s3 = boto3.client("s3", config=S3_CONFIG)
        s3.create_bucket(Bucket=BUCKET)
        fake = Run(s3, RecordingSns())
        settings = ReportSettings.from_env(ENV)
        runtime = report_run.Runtime(settings, object(), s3, fake.sns, Deadline.unlimited(), lambda: REGISTRY)  # type: ignore[arg-type]
        monkeypatch.setattr(app, "_runtime", lambda: runtime)
        monkeypatch.setattr(report_run, "compute_reports", fake.compute_reports)
        yield fake


def test_an_on_demand_run_writes_notifies_and_counts(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    result = app.lambda_handler({"period": "2026-11-02", "branches": ["branch-nyc"]}, FakeLambdaContext())
    assert result["ok"] and (result["written"], result["notified"], result["failed"]) == (1, 1, 0)
    assert run.asked == [("branch-nyc", date(2026, 11, 2))]
    assert run.s3.head_object(Bucket=BUCKET, Key=report_key("branch-nyc", "2026-11-02", "html"))
    request_id = FakeLambdaContext().aws_request_id
    assert run.extracts == [f"s3://{BUCKET}/extracts/{request_id}/report_devices-run1.jsonl.gz"]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    metrics = {m["Name"] for doc in emf for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"ReportsWritten", "ReportsUnchanged", "ReportFailures", "ReportRunSeconds"} <= metrics
    again = app.lambda_handler({"period": "2026-11-02", "branches": ["branch-nyc"]}, FakeLambdaContext())
    assert (again["written"], again["unchanged"], len(run.sns.published)) == (0, 1, 1)


def test_a_bad_request_is_answered_not_raised_and_touches_nothing(run: Run) -> None:
    result = app.lambda_handler({"period": "2026-13-01"}, FakeLambdaContext())
    assert result == {"ok": False, "error": "period must be a date YYYY-MM-DD, got '2026-13-01'"}
    result = app.lambda_handler({"period": "2026-11-01", "branches": ["nowhere"]}, FakeLambdaContext())
    assert not result["ok"] and "not in the registry: nowhere" in result["error"]
    assert run.asked == [] and run.sns.published == []


def test_a_run_with_a_failed_branch_delivers_the_rest_then_fails(run: Run) -> None:
    from devicepipe_tools.fakes import client_error

    run.sns.fail["branch-ldn"] = client_error("KMSDisabledException", "Publish")
    with pytest.raises(app.ReportRunFailed, match=r"1 of 2 reports not delivered .*branch-ldn 2026-11-01"):
        app.lambda_handler({"period": "2026-11-01"}, FakeLambdaContext())
    assert [p["MessageAttributes"]["branch_id"]["StringValue"] for p in run.sns.published] == ["branch-nyc"]
