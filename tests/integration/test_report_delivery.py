"""Branch reports delivered and read back.

- Delivery on a moto server (real HTTP): S3, and SNS fanning out to one SQS queue per branch, each subscribed with
  a filter policy on ``branch_id``; each queue receives its own branch's messages only, and the presigned link
  fetches the stored page.
- The read API's report route through its handler: a real redis-server, S3 on moto, the sample events.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws
from moto.server import ThreadedMotoServer

from devicepipe.delivery import S3_CONFIG, DeliverySummary, deliver, report_key
from devicepipe.reports import render_csv, render_html
from devicepipe.retry import Backoff, Retrier
from devicepipe_tools.events import sample_events
from devicepipe_tools.local.net import free_port
from functions.read_api import app as read_app
from tests.conftest import FakeLambdaContext, PrivateRedis
from tests.unit.test_delivery import RecordingSns, a_report

pytestmark = pytest.mark.integration
BUCKET = "devicepipe-reports"
BRANCHES = ("branch-nyc", "branch-ldn")


@dataclass
class Aws:
    s3: Any
    sns: Any
    sqs: Any
    topic_arn: str
    queues: dict[str, str]  # branch id -> queue URL

    def deliver(self, *reports: dict[str, Any]) -> DeliverySummary:
        fast = Retrier(Backoff(base_s=0.01, cap_s=0.01, max_attempts=2))
        return deliver(list(reports), self.s3, BUCKET, self.sns, self.topic_arn, 600, render_csv, render_html, fast)

    def received(self, branch: str) -> list[dict[str, Any]]:
        """SNS envelopes waiting in the branch's queue (taken off it)."""
        answer = self.sqs.receive_message(QueueUrl=self.queues[branch], MaxNumberOfMessages=10, WaitTimeSeconds=0)
        return [json.loads(m["Body"]) for m in answer.get("Messages", [])]


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str) -> Aws:
    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=moto_server, config=S3_CONFIG)
    sns, sqs = session.client("sns", endpoint_url=moto_server), session.client("sqs", endpoint_url=moto_server)
    suffix = free_port()  # fresh names per test on the module's server
    bucket_exists = BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    if not bucket_exists:
        s3.create_bucket(Bucket=BUCKET)
    topic_arn = sns.create_topic(Name=f"branch-reports-{suffix}")["TopicArn"]
    queues = {}
    for branch in BRANCHES:
        url = sqs.create_queue(QueueName=f"{branch}-{suffix}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        # A branch subscribes to its own reports: the filter policy matches the message attribute branch_id
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"FilterPolicy": json.dumps({"branch_id": [branch]}), "FilterPolicyScope": "MessageAttributes"},
        )
        queues[branch] = url
    return Aws(s3, sns, sqs, topic_arn, queues)


def test_each_branch_queue_receives_only_its_own_reports(aws: Aws) -> None:
    summary = aws.deliver(a_report("branch-nyc"), a_report("branch-ldn", readings=20))
    assert (summary.written, summary.notified, summary.failed) == (2, 2, 0)
    for branch in BRANCHES:
        [envelope] = aws.received(branch)
        assert envelope["MessageAttributes"]["branch_id"] == {"Type": "String", "Value": branch}
        assert envelope["MessageAttributes"]["period"] == {"Type": "String", "Value": "2026-11-02"}
        assert f"({branch}), 2026-11-02" in envelope["Message"] and envelope["Subject"].startswith("Branch report")


def test_the_presigned_link_fetches_the_stored_page(aws: Aws) -> None:
    report = a_report("branch-nyc", readings=31)
    aws.deliver(report)
    [envelope] = aws.received("branch-nyc")
    links = dict(line.split(": ", 1) for line in envelope["Message"].splitlines() if "://" in line)
    with urllib.request.urlopen(links["Report"], timeout=5) as page:
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.read().decode() == render_html(report)
    with urllib.request.urlopen(links["Data (JSON)"], timeout=5) as data:
        assert json.loads(data.read()) == report


def test_a_rerun_is_silent_and_late_readings_reach_only_their_branch(aws: Aws) -> None:
    aws.deliver(a_report("branch-nyc"), a_report("branch-ldn"))
    for branch in BRANCHES:
        aws.received(branch)
    quiet = aws.deliver(a_report("branch-nyc"), a_report("branch-ldn"))
    assert (quiet.unchanged, quiet.notified) == (2, 0)
    assert aws.received("branch-nyc") == [] == aws.received("branch-ldn")
    late = aws.deliver(a_report("branch-nyc"), a_report("branch-ldn", readings=11))
    assert (late.written, late.unchanged) == (1, 1)
    [update] = aws.received("branch-ldn")
    assert update["MessageAttributes"]["change"]["Value"] == "updated" and aws.received("branch-nyc") == []


# ------------------------------------------------------------------------------------ the read API's route


@dataclass
class ReadStack:
    s3: Any
    redis: redis.Redis
    server: PrivateRedis

    def call(self, name: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        answer = read_app.lambda_handler(sample_events()[f"read_api/{name}.json"], FakeLambdaContext())
        return answer["statusCode"], json.loads(answer["body"]), answer["headers"]


@pytest.fixture
def read_stack(monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis) -> Iterator[ReadStack]:
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    monkeypatch.setenv("TABLE_NAME", "devicepipe-readings")
    monkeypatch.setenv("REPORTS_BUCKET", BUCKET)
    read_app._reads.cache_clear()
    read_app._settings.cache_clear()
    with mock_aws():
        s3 = boto3.client("s3", config=S3_CONFIG)
        s3.create_bucket(Bucket=BUCKET)
        try:
            yield ReadStack(s3, redis.Redis(port=private_redis.port), private_redis)
        finally:
            read_app._reads.cache_clear()
            read_app._settings.cache_clear()


def test_the_report_route_answers_its_sample_events(read_stack: ReadStack) -> None:
    report = a_report("branch-nyc")  # period 2026-11-02, as read_api/report.json asks
    deliver([report], read_stack.s3, BUCKET, RecordingSns(), "arn:topic", 60, render_csv, render_html)
    status, first, _ = read_stack.call("report")
    status2, second, _ = read_stack.call("report")
    assert (status, first["source"], status2, second["source"]) == (200, "store", 200, "cache")
    assert first["report"] == second["report"] == report
    assert 0 < read_stack.redis.ttl("dp:report:branch-nyc:2026-11-02") <= 300
    status, body, _ = read_stack.call("report-not-found")
    assert (status, body["error"]["code"]) == (404, "report_not_found")
    status, body, _ = read_stack.call("report-bad-period")
    assert (status, body["error"]["field"]) == (400, "period")


def test_the_report_route_rides_out_redis_and_answers_503_without_s3(read_stack: ReadStack) -> None:
    report = a_report("branch-nyc")
    key = report_key("branch-nyc", "2026-11-02", "json")
    read_stack.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(report).encode())
    # S3 unreachable and the report not in Redis: 503 with Retry-After, like the table being down
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        status, body, headers = read_stack.call("report")
        assert status == 503 and body["error"]["code"] == "unavailable" and int(headers["Retry-After"]) > 0
    finally:
        del os.environ["AWS_ENDPOINT_URL_S3"]
        read_app._reads.cache_clear()
    # Redis down: served from the bucket
    read_stack.server.stop()
    status, body, _ = read_stack.call("report")
    assert (status, body["source"], body["report"]) == (200, "store", report)
