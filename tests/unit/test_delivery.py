"""Report delivery: keys, idempotency by content hash, one branch failing, retries, the SNS message (moto S3 in
process, a recording SNS: no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws

from devicepipe.delivery import (
    HASH_METADATA,
    S3_CONFIG,
    DeliverySummary,
    content_hash,
    deliver,
    message,
    report_key,
    subject,
)
from devicepipe.retry import Backoff, Retrier
from devicepipe_tools.fakes import client_error

BUCKET = "reports"
TOPIC = "arn:aws:sns:us-east-1:123456789012:devicepipe-reports"
NOW = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)


def a_report(branch: str = "branch-001", readings: int = 10, **summary: Any) -> dict[str, Any]:
    """A report document shaped like devicepipe.reports' (only what delivery reads matters here)."""
    return {
        "schema": 1,
        "branch_id": branch,
        "branch_name": f"Branch {branch[-3:]}",
        "time_zone": "America/New_York",
        "period": "2026-11-02",
        "period_start": "2026-11-02T04:00:00Z",
        "period_end": "2026-11-03T05:00:00Z",
        "generated_at": "2026-11-03T09:15:00Z",
        "final": False,
        "gap_threshold_s": 900,
        "summary": {
            "readings": readings,
            "devices_expected": 2,
            "devices_reporting": 1,
            "silent_devices": ["dev-002"],
            "unregistered_devices": [],
            "out_of_range": 1,
        }
        | summary,
        "devices": [
            {
                "device_id": "dev-001",
                "kind": "fridge",
                "registered": True,
                "readings": readings,
                "first_seen": "2026-11-02T04:00:05Z",
                "last_seen": "2026-11-03T04:59:55Z",
                "gaps": [{"from": "2026-11-02T10:00:00Z", "to": "2026-11-02T11:00:00Z", "seconds": 3600}],
                "metrics": {
                    "temp_c": {
                        "unit": "C",
                        "count": readings,
                        "min": 2.0,
                        "max": 9.5,
                        "avg": 4.1,
                        "p95": 8.0,
                        "low": 0.0,
                        "high": 8.0,
                        "out_of_range": 1,
                    }
                },
            }
        ],
    }


def render_csv(report: Mapping[str, Any]) -> str:
    return f"device_id,readings\ndev-001,{report['summary']['readings']}\n"


def render_html(report: Mapping[str, Any]) -> str:
    return f"<!doctype html><title>{report['branch_id']}</title><p>{report['summary']['readings']} readings"


class RecordingSns:
    """SNS that records what is published; ``fail`` maps a branch id to the error its publish raises."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.published: list[dict[str, Any]] = []
        self.fail = fail or {}

    def publish(self, **kwargs: Any) -> dict[str, str]:
        branch = kwargs["MessageAttributes"]["branch_id"]["StringValue"]
        if branch in self.fail:
            raise self.fail[branch]
        self.published.append(kwargs)
        return {"MessageId": str(len(self.published))}


class FlakyS3:
    """An S3 client whose put_object fails ``failures`` times with a transient error, then works."""

    def __init__(self, s3: Any, failures: int) -> None:
        self.s3, self.failures = s3, failures

    def put_object(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise client_error("SlowDown", "PutObject", status=503)
        return self.s3.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", config=S3_CONFIG)
        client.create_bucket(Bucket=BUCKET)
        yield client


def run(s3: Any, sns: Any, reports: list[dict[str, Any]], waits: list[float] | None = None) -> DeliverySummary:
    retrier = Retrier(
        Backoff(base_s=0.01, cap_s=0.01, max_attempts=3), sleep=(waits if waits is not None else []).append
    )
    return deliver(reports, s3, BUCKET, sns, TOPIC, 3600, render_csv, render_html, retrier=retrier, now=lambda: NOW)


def stored(s3: Any, branch: str, ext: str) -> dict[str, Any]:
    return s3.get_object(Bucket=BUCKET, Key=report_key(branch, "2026-11-02", ext))  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ keys and hashes


def test_report_keys_follow_the_design_layout() -> None:
    assert report_key("branch-001", "2026-11-02", "json") == "reports/branch=branch-001/period=2026-11-02/report.json"
    assert report_key("b", datetime(2026, 1, 5).date(), "csv") == "reports/branch=b/period=2026-01-05/report.csv"


def test_the_content_hash_ignores_only_generated_at() -> None:
    report = a_report()
    assert content_hash(report) == content_hash(report | {"generated_at": "2027-01-01T00:00:00Z"})
    assert content_hash(report) == content_hash(dict(reversed(list(report.items()))))  # key order is no change
    assert content_hash(report) != content_hash(a_report(readings=11))
    assert content_hash(report) != content_hash(report | {"final": True})


# ------------------------------------------------------------------------------------ writing and notifying


def test_a_new_report_is_written_as_three_typed_files_then_notified(s3: Any) -> None:
    sns = RecordingSns()
    summary = run(s3, sns, [a_report()])
    assert (summary.written, summary.unchanged, summary.notified, summary.failed) == (1, 0, 1, 0)
    types = {ext: stored(s3, "branch-001", ext)["ContentType"] for ext in ("json", "csv", "html")}
    assert types == {"json": "application/json", "csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8"}
    for ext in ("json", "csv", "html"):
        assert stored(s3, "branch-001", ext)["Metadata"] == {HASH_METADATA: content_hash(a_report())}
    assert json.loads(stored(s3, "branch-001", "json")["Body"].read()) == a_report()
    assert stored(s3, "branch-001", "csv")["Body"].read() == b"device_id,readings\ndev-001,10\n"


def test_the_message_carries_branch_and_period_attributes_and_presigned_links(s3: Any) -> None:
    sns = RecordingSns()
    run(s3, sns, [a_report()])
    [sent] = sns.published
    assert sent["TopicArn"] == TOPIC
    assert sent["MessageAttributes"] == {
        "branch_id": {"DataType": "String", "StringValue": "branch-001"},
        "period": {"DataType": "String", "StringValue": "2026-11-02"},
        "change": {"DataType": "String", "StringValue": "new"},
        "final": {"DataType": "String", "StringValue": "false"},
    }
    assert sent["Subject"] == "Branch report Branch 001 2026-11-02 (provisional)"
    body = sent["Message"]
    assert "Devices reporting: 1 of 2 expected" in body and "Silent devices: dev-002" in body
    assert "Out-of-range readings: 1" in body and "GET /branches/branch-001/report?period=2026-11-02" in body
    assert "expire at 2026-11-03T10:15:00Z at the latest" in body
    links = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in body.splitlines() if "https://" in line}
    assert set(links) == {"Report", "Data (JSON)", "Data (CSV)"}
    url = urlsplit(links["Report"])
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc) == ("https", f"{BUCKET}.s3.amazonaws.com")
    assert url.path == "/reports/branch%3Dbranch-001/period%3D2026-11-02/report.html"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["3600"]
    assert urlsplit(links["Data (JSON)"]).path.endswith("/report.json")


def test_a_rerun_without_new_data_writes_and_sends_nothing(s3: Any) -> None:
    sns = RecordingSns()
    run(s3, sns, [a_report()])
    etag = stored(s3, "branch-001", "json")["ETag"]
    again = run(s3, sns, [a_report() | {"generated_at": "2026-11-03T10:15:00Z"}])
    assert (again.written, again.unchanged, again.notified) == (0, 1, 0)
    assert len(sns.published) == 1 and stored(s3, "branch-001", "json")["ETag"] == etag


def test_a_rerun_with_late_readings_rewrites_the_report_and_notifies_an_update(s3: Any) -> None:
    sns = RecordingSns()
    run(s3, sns, [a_report()])
    summary = run(s3, sns, [a_report(readings=12)])
    assert (summary.written, summary.notified) == (1, 1)
    assert json.loads(stored(s3, "branch-001", "json")["Body"].read())["summary"]["readings"] == 12
    assert b"12 readings" in stored(s3, "branch-001", "html")["Body"].read()
    update = sns.published[-1]
    assert update["MessageAttributes"]["change"]["StringValue"] == "updated"
    assert update["Subject"].endswith("(provisional, updated)") and update["Message"].startswith("Updated report")


# ------------------------------------------------------------------------------------ failures


def test_one_failing_branch_does_not_stop_the_others_and_is_redone_next_run(s3: Any) -> None:
    sns = RecordingSns(fail={"branch-002": client_error("AuthorizationError", "Publish", status=403)})
    reports = [a_report("branch-001"), a_report("branch-002"), a_report("branch-003")]
    summary = run(s3, sns, reports)
    assert (summary.written, summary.notified, summary.failed) == (2, 2, 1)
    assert summary.failed_branches == ["branch-002"]
    [failure] = summary.failures
    assert failure.period == "2026-11-02" and "AuthorizationError" in failure.reason
    # report.json (the commit marker) was not written, so the next run does the branch again, and only it
    with pytest.raises(s3.exceptions.NoSuchKey):
        stored(s3, "branch-002", "json")
    sns.fail.clear()
    again = run(s3, sns, reports)
    assert (again.written, again.unchanged, again.notified, again.failed) == (1, 2, 1, 0)
    assert sns.published[-1]["MessageAttributes"]["branch_id"]["StringValue"] == "branch-002"


def test_a_report_that_does_not_render_is_a_failed_branch_too(s3: Any) -> None:
    broken = a_report("branch-009")
    del broken["summary"]["readings"]
    summary = run(s3, RecordingSns(), [broken, a_report("branch-001")])
    assert summary.failed_branches == ["branch-009"] and summary.written == 1
    assert "KeyError" in summary.failures[0].reason


def test_transient_errors_are_retried_with_backoff(s3: Any) -> None:
    waits: list[float] = []
    summary = run(FlakyS3(s3, failures=2), RecordingSns(), [a_report()], waits)
    assert (summary.written, summary.failed) == (1, 0) and len(waits) == 2


def test_transient_errors_outlasting_the_retries_fail_only_that_branch(s3: Any) -> None:
    summary = run(FlakyS3(s3, failures=3), RecordingSns(), [a_report("branch-001"), a_report("branch-002")])
    assert summary.failed_branches == ["branch-001"] and summary.written == 1
    assert "gave up after 3 attempts: SlowDown" in summary.failures[0].reason


def test_a_run_overlapping_another_never_overwrites_its_report_silently(s3: Any) -> None:
    run(s3, RecordingSns(), [a_report()])

    class OtherRunMeanwhile(FlakyS3):
        def put_object(self, **kwargs: Any) -> Any:
            if kwargs["Key"].endswith("report.csv"):  # another run commits its report while this one writes
                self.s3.put_object(Bucket=BUCKET, Key=report_key("branch-001", "2026-11-02", "json"), Body=b"{}")
            return self.s3.put_object(**kwargs)

    summary = run(OtherRunMeanwhile(s3, 0), RecordingSns(), [a_report(readings=99)])
    assert summary.failed == 1 and "PreconditionFailed" in summary.failures[0].reason
    assert stored(s3, "branch-001", "json")["Body"].read() == b"{}"  # the other run's report stands


# ------------------------------------------------------------------------------------ message text


def test_the_subject_is_one_short_line_whatever_the_branch_name() -> None:
    report = a_report() | {"branch_name": "North\nEast\tbranch " + "x" * 200, "final": True}
    text = subject(report, "updated")
    assert "\n" not in text and "\t" not in text and len(text) < 100 and text.endswith("...")
    assert subject(a_report() | {"branch_name": ""}, "new").startswith("Branch report branch-001 ")


def test_long_device_lists_are_shortened_in_the_message() -> None:
    silent = [f"dev-{i:03d}" for i in range(25)]
    links = {"html": "https://h", "json": "https://j", "csv": "https://c"}
    text = message(a_report(silent_devices=silent), "new", links, NOW)
    assert "dev-019 and 5 more" in text and "dev-020" not in text
    assert "Unregistered devices: none" in text
