"""Branch reports delivered: three files in S3 and one SNS message per report that changed.

Layout (docs/architecture.md, "Registry and branch reports"):
``reports/branch=<id>/period=<date>/report.{json,csv,html}``. Idempotent per (branch, period): every file carries
the report's content hash (the report without ``generated_at``) in its metadata, and a report whose stored
``report.json`` has the same hash is neither written nor notified, so a re-run without new data is silent and one
with late readings rewrites the files and notifies ``updated``.

Order per report: ``report.csv``, ``report.html``, the SNS message, then ``report.json`` last. ``report.json`` is
the commit marker (the read API serves it and the next run compares with it): whatever fails before it leaves the
old hash in place, so the next run does it all again and nothing is lost, only possibly notified twice. It is
written conditionally (``If-Match`` the ETag read at the start, or ``If-None-Match: *`` when new), so two runs
overlapping on one report never silently replace each other's: the later one fails that branch (``412``) and
its retry decides. https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html

A failing branch (S3, SNS, or a report that does not render) never stops the others: transient errors are
retried with backoff, and what still fails is returned in ``DeliverySummary.failures``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from botocore.config import Config
from botocore.exceptions import ClientError

from devicepipe.observability import logger
from devicepipe.retry import Backoff, Retrier, error_code

#: The S3 client that signs the links: SigV4 (boto3 still presigns SigV2 by default in us-east-1, and SigV4 is
#: the only one S3 accepts for SSE-KMS objects:
#: https://repost.aws/knowledge-center/s3-kms-signature-version-error) on the bucket's regional virtual host
#: (an ``AWS_ENDPOINT_URL`` such as the local stack's is still addressed by path).
S3_CONFIG = Config(signature_version="s3v4", s3={"addressing_style": "virtual"})
#: Object metadata (``x-amz-meta-content-sha256``) holding the report's content hash.
HASH_METADATA = "content-sha256"
#: Written in this order; ``json`` last (see the module's docstring).
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "json": "application/json",
}
#: A few tries over about ten seconds on top of botocore's own retries: a throttled or briefly failing S3 or SNS
#: call, not an outage (the schedule's retry covers that).
DEFAULT_RETRIER = Retrier(Backoff(base_s=0.5, cap_s=5.0, max_attempts=4))
#: SNS subjects: "UTF-8 text with no line breaks or control characters, and less than 100 characters long"
#: (https://docs.aws.amazon.com/sns/latest/api/API_Publish.html).
_SUBJECT_MAX = 99
_LISTED_MAX = 20
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})

Render = Callable[[Mapping[str, Any]], str]
_T = TypeVar("_T")


def report_key(branch_id: str, period: str | date, ext: str) -> str:
    """Where a branch's report for a period is stored (``ext``: json, csv or html)."""
    return f"reports/branch={branch_id}/period={period}/report.{ext}"


def content_hash(report: Mapping[str, Any]) -> str:
    """SHA-256 of the report without ``generated_at``: equal for two runs that found the same data."""
    body = {k: v for k, v in report.items() if k != "generated_at"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Failure:
    """A report that was not delivered, and why."""

    branch_id: str
    period: str
    reason: str


@dataclass
class DeliverySummary:
    """What a delivery did: reports ``written`` (all three files), ``unchanged`` (same content hash: nothing
    written or sent), ``notified`` (SNS messages sent) and ``failed``, with ``failures`` saying which and why."""

    written: int = 0
    unchanged: int = 0
    notified: int = 0
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed_branches(self) -> list[str]:
        return sorted({f.branch_id for f in self.failures})


class DeliveryError(RuntimeError):
    """An S3 or SNS call still failing after its retries."""


def deliver(
    reports: Iterable[Mapping[str, Any]],
    s3: Any,
    bucket: str,
    sns: Any,
    topic_arn: str,
    link_ttl_s: int,
    render_csv: Render,
    render_html: Render,
    retrier: Retrier = DEFAULT_RETRIER,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DeliverySummary:
    """Store each report and notify its branch; one report failing never stops the others.

    Parameters
    ----------
    reports
        Report documents (``devicepipe.reports``): ``branch_id``, ``period``, ``summary``, ...
    s3, sns
        boto3 clients; ``s3`` signs the links, so configure it with ``S3_CONFIG``.
    link_ttl_s
        Lifetime of the presigned links. S3 ends a link sooner when the temporary credentials that signed it
        (a Lambda role's) expire: https://repost.aws/knowledge-center/presigned-url-s3-bucket-expiration. The
        message therefore also names the read API route, which serves the report without a time limit.
    render_csv, render_html
        The report as CSV and as a readable HTML page.
    retrier
        Retries transient S3 and SNS errors; its deadline should be the function's.
    """
    courier = _Courier(s3, bucket, sns, topic_arn, link_ttl_s, {"csv": render_csv, "html": render_html}, retrier, now)
    summary = DeliverySummary()
    for report in reports:
        branch, period = str(report.get("branch_id", "?")), str(report.get("period", "?"))
        try:
            courier.deliver(report, summary)
        except Exception as exc:  # one branch's failure, whatever it is, must not stop the others
            logger.exception("report delivery failed", extra={"branch_id": branch, "period": period})
            summary.failed += 1
            summary.failures.append(Failure(branch, period, f"{type(exc).__name__}: {exc}"[:300]))
    return summary


@dataclass
class _Courier:
    s3: Any
    bucket: str
    sns: Any
    topic_arn: str
    link_ttl_s: int
    renderers: dict[str, Render]
    retrier: Retrier
    now: Callable[[], datetime]

    def deliver(self, report: Mapping[str, Any], summary: DeliverySummary) -> None:
        branch, period = str(report["branch_id"]), str(report["period"])
        digest = content_hash(report)
        stored = self._stored(branch, period)
        if stored is not None and stored[1] == digest:
            summary.unchanged += 1
            return
        for ext, render in self.renderers.items():
            self._put(branch, period, ext, render(report), digest)
        self._notify(report, "updated" if stored else "new")
        summary.notified += 1
        # If-Match the ETag read above: a report changed meanwhile by another run fails here (412)
        condition = {"IfMatch": stored[0]} if stored else {"IfNoneMatch": "*"}
        self._put(branch, period, "json", _dumps(report), digest, **condition)
        summary.written += 1

    def _stored(self, branch: str, period: str) -> tuple[str, str] | None:
        """``(ETag, content hash)`` of the stored report.json, or None when there is none. A missing key is a 404
        only with ``s3:ListBucket`` on the bucket, else a 403 that fails the branch every run:
        https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html"""
        try:
            head = self._retried(
                lambda: self.s3.head_object(Bucket=self.bucket, Key=report_key(branch, period, "json"))
            )
        except ClientError as exc:
            if error_code(exc) in _NOT_FOUND:
                return None
            raise
        return str(head["ETag"]), str(head.get("Metadata", {}).get(HASH_METADATA, ""))

    def _put(self, branch: str, period: str, ext: str, body: str, digest: str, **condition: str) -> None:
        key = report_key(branch, period, ext)
        self._retried(
            lambda: self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body.encode(),
                ContentType=CONTENT_TYPES[ext],
                Metadata={HASH_METADATA: digest},
                **condition,
            )
        )

    def _notify(self, report: Mapping[str, Any], change: str) -> None:
        branch, period = str(report["branch_id"]), str(report["period"])
        links = {
            ext: self.s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": report_key(branch, period, ext)},
                ExpiresIn=self.link_ttl_s,
            )
            for ext in ("html", "json", "csv")
        }
        expires = self.now() + timedelta(seconds=self.link_ttl_s)
        # Filter policies match message attributes, String-typed here, by exact value:
        # https://docs.aws.amazon.com/sns/latest/dg/sns-subscription-filter-policies.html. The message is a plain
        # string: attributes are delivered only when the message structure is String, not JSON
        # (https://docs.aws.amazon.com/sns/latest/dg/sns-message-attributes.html).
        attributes = {
            "branch_id": branch,
            "period": period,
            "change": change,
            "final": "true" if report.get("final") else "false",
        }
        self._retried(
            lambda: self.sns.publish(
                TopicArn=self.topic_arn,
                Subject=subject(report, change),
                Message=message(report, change, links, expires),
                MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
            )
        )

    def _retried(self, call: Callable[[], _T]) -> _T:
        """One S3 or SNS call, transient errors retried; ``DeliveryError`` when they outlast the retries."""
        results: list[_T] = []

        def attempt() -> bool:
            results.append(call())
            return True

        outcome = self.retrier.run(attempt)
        if not outcome.done:
            raise DeliveryError(outcome.error)
        return results[0]


def subject(report: Mapping[str, Any], change: str) -> str:
    """The message's subject (the e-mail's): branch, period, final or provisional, and updated."""
    state = "final" if report.get("final") else "provisional"
    if change == "updated":
        state += ", updated"
    name = report.get("branch_name") or report["branch_id"]
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", f"Branch report {name} {report['period']} ({state})")
    return text if len(text) <= _SUBJECT_MAX else text[: _SUBJECT_MAX - 3] + "..."


def message(report: Mapping[str, Any], change: str, links: Mapping[str, str], expires: datetime) -> str:
    """The message's text: the summary, the links and where to read the report once they expire."""
    s = report.get("summary", {})
    branch, period = report["branch_id"], report["period"]
    state = "final" if report.get("final") else "provisional"
    lines = [
        f"{'Updated report' if change == 'updated' else 'Report'} for {report.get('branch_name') or branch} "
        f"({branch}), {period} in {report.get('time_zone', 'UTC')}: {state}.",
        "",
        f"Readings: {s.get('readings', 0)}",
        f"Devices reporting: {s.get('devices_reporting', 0)} of {s.get('devices_expected', 0)} expected",
        f"Silent devices: {_listed(s.get('silent_devices', []))}",
        f"Unregistered devices: {_listed(s.get('unregistered_devices', []))}",
        f"Out-of-range readings: {s.get('out_of_range', 0)}",
        "",
        f"Report: {links['html']}",
        f"Data (JSON): {links['json']}",
        f"Data (CSV): {links['csv']}",
        "",
        f"The links expire at {expires.strftime('%Y-%m-%dT%H:%M:%SZ')} at the latest. The report stays readable "
        f"through the read API: GET /branches/{branch}/report?period={period}",
    ]
    return "\n".join(lines)


def _listed(ids: list[str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(ids[:_LISTED_MAX])
    return shown if len(ids) <= _LISTED_MAX else f"{shown} and {len(ids) - _LISTED_MAX} more"


def _dumps(report: Mapping[str, Any]) -> str:
    return json.dumps(report, separators=(",", ":"), ensure_ascii=False, default=str)
