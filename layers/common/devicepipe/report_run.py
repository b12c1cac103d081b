"""A report run: what an event asks for, and computing then delivering it (ReportFunction's logic).

ReportFunction's handler and the local stack's schedule (``devicepipe_tools.local.loader_worker``) both run it,
each over its own ``Runtime``: the Redshift Data API and Aurora in AWS, DuckDB and PostgreSQL locally.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from devicepipe.config import ReportSettings
from devicepipe.delivery import DEFAULT_RETRIER, DeliverySummary, deliver
from devicepipe.models import is_valid_id
from devicepipe.registry import Registry
from devicepipe.reports import compute_reports, due_periods, render_csv, render_html
from devicepipe.retry import Deadline, Retrier
from devicepipe.warehouse import Warehouse

#: Fields of an EventBridge event (a scheduled rule's); Scheduler sends the schedule's input, ``{}`` by default.
_SCHEDULE_SOURCES = frozenset({"aws.events", "aws.scheduler"})
_REQUEST_FIELDS = frozenset({"period", "branches"})
_MAX_BRANCHES = 1000
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: The easternmost time zone (UTC+14): a period later than its current date has not begun anywhere.
_EARLIEST_ZONE = timedelta(hours=14)


class BadRequest(ValueError):
    """An on-demand event that does not ask for a report this function can make."""


@dataclass(frozen=True)
class Request:
    """What to report: ``period`` None for the schedule's due periods; ``branches`` None for every branch."""

    period: date | None = None
    branches: tuple[str, ...] | None = None


def parse_request(event: Any, now: datetime) -> Request:
    """The request an event makes; ``BadRequest`` naming what is wrong."""
    if not isinstance(event, Mapping):
        raise BadRequest(f"the event must be a JSON object, got {type(event).__name__}")
    if not event or event.get("source") in _SCHEDULE_SOURCES:
        return Request()
    unknown = sorted(set(event) - _REQUEST_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}: expected period (YYYY-MM-DD) and branches (a list)")
    return Request(_period(event.get("period"), now), _branches(event.get("branches")))


def _period(raw: Any, now: datetime) -> date:
    try:  # the pattern first: fromisoformat also takes 20261101 and 2026-W44-7
        period = date.fromisoformat(raw) if isinstance(raw, str) and _DATE.fullmatch(raw) else None
    except ValueError:  # 2026-02-30
        period = None
    if period is None:
        raise BadRequest(f"period must be a date YYYY-MM-DD, got {raw!r}")
    if period > (now + _EARLIEST_ZONE).date():
        raise BadRequest(f"period {period} has not begun in any time zone yet")
    return period


def _branches(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or len(raw) > _MAX_BRANCHES:
        raise BadRequest(f"branches must be a list of 1 to {_MAX_BRANCHES} branch ids, got {str(raw)[:80]!r}")
    bad = [b for b in raw if not isinstance(b, str) or not is_valid_id(b)]
    if bad:
        raise BadRequest(f"branch ids must be 1-128 characters of [A-Za-z0-9._:-], got {bad[:5]!r}")
    return tuple(dict.fromkeys(raw))  # each once, in the order asked


def periods_of(request: Request, registry: Registry, now: datetime) -> list[tuple[str, date]]:
    """``(branch_id, period)`` to report: the schedule's due periods, or the requested period of the requested
    (else every) registered branch; ``BadRequest`` for a branch the registry does not know."""
    if request.period is None:
        return due_periods(registry, now)
    known = [b.branch_id for b in registry.branches]
    wanted = request.branches or tuple(known)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise BadRequest(f"branch(es) not in the registry: {', '.join(unknown[:10])}")
    return [(b, request.period) for b in wanted]


def extract_writer(s3: Any, bucket: str, run_id: str) -> Callable[[str, bytes], str]:
    """``put_extract`` for ``compute_reports``: a registry extract for the warehouse to COPY, stored under the
    run's own prefix (``extracts/<run id>/<name>.jsonl.gz``); returns its ``s3://`` URL."""

    def put(name: str, data: bytes) -> str:
        key = f"extracts/{run_id}/{name}.jsonl.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/gzip")
        return f"s3://{bucket}/{key}"

    return put


@dataclass
class Runtime:
    """What a run needs: the handler's over AWS, or the local stack's over DuckDB and its PostgreSQL."""

    settings: ReportSettings
    warehouse: Warehouse
    s3: Any
    sns: Any
    deadline: Deadline
    registry: Callable[[], Registry]


def run(rt: Runtime, request: Request, now: datetime, run_id: str) -> tuple[DeliverySummary, int]:
    """Compute and deliver what ``request`` asks for; the delivery summary and how many reports were due.
    ``BadRequest`` when the request names a branch the registry does not know."""
    registry = rt.registry()
    periods = periods_of(request, registry, now)
    s = rt.settings
    reports = compute_reports(
        rt.warehouse,
        registry,
        periods,
        put_extract=extract_writer(rt.s3, s.reports_bucket, run_id),
        role_arn=s.copy_role_arn,
        now=now,
        gap_threshold_s=s.gap_threshold_s,
        final_after_s=s.final_after_s,
    )
    summary = deliver(
        reports,
        rt.s3,
        s.reports_bucket,
        rt.sns,
        s.topic_arn,
        s.link_ttl_s,
        render_csv,
        render_html,
        retrier=Retrier(DEFAULT_RETRIER.backoff, rt.deadline),
    )
    return summary, len(periods)
