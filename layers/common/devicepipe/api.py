"""The read API over HTTP (docs/read-api.md): routes, input rules, cursors and the error model.

Routing is powertools' ``APIGatewayHttpResolver``. Inputs are checked here rather than by its pydantic
validation: the contract answers ``400`` naming the field and the rule (pydantic's answer is a ``422`` in its
own shape), and a pydantic import would add to every cold start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware

from devicepipe.models import InvalidReading, canonical_time, format_epoch_s, is_valid_id
from devicepipe.observability import logger
from devicepipe.reads import NotFound, Reads, Unavailable

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
RETRY_AFTER_S = 5
_JSON = "application/json"
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_ID_RULE = "1-128 characters of [A-Za-z0-9._:-]"
_NONE = "'none'"
_TIME_RULE = "RFC 3339 with a zone (2026-11-02T09:00:00Z) or epoch milliseconds"
_PERIOD_RULE = "a date YYYY-MM-DD"


class ApiError(Exception):
    """An answer other than 200, in the API's one error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        rule: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.rule, self.retry_after_s = field, rule, retry_after_s

    def response(self) -> Response[str]:
        body: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field:
            body |= {"field": self.field, "rule": self.rule}
        headers = dict(_SECURITY_HEADERS)
        if self.retry_after_s:
            headers["Retry-After"] = str(self.retry_after_s)
        return Response(self.status, _JSON, _dumps({"error": body}), headers)


def invalid(field: str, rule: str, got: Any) -> ApiError:
    shown = got if len(str(got)) <= 80 else str(got)[:77] + "..."
    return ApiError(400, "invalid_parameter", f"{field}: must be {rule}, got {shown!r}", field, rule)


# ---------------------------------------------------------------------------------------------- inputs
def checked_id(value: str, field: str) -> str:
    """A device or branch id from the path (decoded: the resolver matches on the raw, percent-encoded path)."""
    value = unquote(value)
    if not is_valid_id(value):
        raise invalid(field, _ID_RULE, value)
    return value


def checked_int(params: Mapping[str, str], field: str, default: int, low: int, high: int) -> int:
    raw = params.get(field)
    if raw is None:
        return default
    rule = f"an integer from {low} to {high}"
    if not re.fullmatch(r"\d{1,12}", raw) or not low <= int(raw) <= high:
        raise invalid(field, rule, raw)
    return int(raw)


def checked_time(params: Mapping[str, str], field: str) -> str | None:
    """A time parameter in the table's canonical form, or None when absent."""
    raw = params.get(field)
    if raw is None:
        return None
    try:
        return canonical_time(raw)
    except InvalidReading:
        raise invalid(field, _TIME_RULE, raw) from None


def checked_period(params: Mapping[str, str], now_s: float) -> str:
    """A report period (a day, ``YYYY-MM-DD``); absent, yesterday's UTC date: the newest day that has ended
    in UTC (a branch further west may not have its report for it yet)."""
    raw = params.get("period")
    if raw is None:
        return (datetime.fromtimestamp(now_s, UTC).date() - timedelta(days=1)).isoformat()
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):  # fromisoformat also takes 20261102, 2026-W44-7
        raise invalid("period", _PERIOD_RULE, raw)
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:  # 2026-02-30
        raise invalid("period", _PERIOD_RULE, raw) from None


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts, bound to the query it came from (``scope``): opaque to clients."""

    scope: dict[str, Any]
    after: Any

    def encode(self) -> str:
        raw = json.dumps({"s": self.scope, "a": self.after}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str | None, scope: dict[str, Any], valid: Callable[[Any], bool]) -> Any:
        """The position stored in ``text`` (None without a cursor); ``400`` if it is malformed, belongs to
        another route, device, branch or time range, or holds a position ``valid`` refuses."""
        if text is None:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            raise invalid("cursor", "the next_cursor of a previous page", text) from None
        if not isinstance(data, dict) or data.get("s") != scope or "a" not in data or not valid(data["a"]):
            raise invalid("cursor", "the next_cursor of a previous page of the same query", text)
        return data["a"]


# ---------------------------------------------------------------------------------------------- the app
def page_html_headers(html: str) -> dict[str, str]:
    """Headers for the dashboard page: a Content-Security-Policy allowing exactly its inline scripts (by
    hash), same-origin API calls and nothing from anywhere else."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts
    )
    policy = (
        f"default-src 'none'; script-src {hashes or _NONE}; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {**_SECURITY_HEADERS, "Cache-Control": "no-cache", "Content-Security-Policy": policy}


def build_app(
    reads: Callable[[], Reads],
    region: str,
    version: str,
    stale_after_s: Callable[[], int],
    dashboard_html: Callable[[], str],
    now_s: Callable[[], float] = time.time,
) -> APIGatewayHttpResolver:
    """The resolver with every route of docs/read-api.md.

    Dependencies come as callables so the handler can build them once, on first use (a missing setting is
    then a clear error in the log rather than an import failure).
    """
    app = APIGatewayHttpResolver(serializer=_dumps)
    app.use(middlewares=[_security_headers])
    routes = _Routes(app, reads, region, version, stale_after_s, dashboard_html, now_s)
    app.get("/devices/<device_id>/latest")(routes.latest)
    app.get("/devices/<device_id>/readings")(routes.readings)
    app.get("/branches")(routes.branches)
    app.get("/branches/<branch_id>/devices")(routes.branch_devices)
    app.get("/branches/<branch_id>/report")(routes.report)
    app.get("/health")(routes.health)
    app.get("/")(routes.dashboard)
    app.not_found(routes.not_found)
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(Exception)(routes.bug)
    return app


def _security_headers(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
    response: Response[Any] = next_middleware(app)
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _api_error(exc: ApiError) -> Response[str]:
    return exc.response()


@dataclass(frozen=True)
class _Routes:
    """The routes' handlers, over the app (for the current request) and build_app's dependencies."""

    app: APIGatewayHttpResolver
    reads: Callable[[], Reads]
    region: str
    version: str
    stale_after_s: Callable[[], int]
    dashboard_html: Callable[[], str]
    now_s: Callable[[], float]

    def params(self) -> dict[str, str]:
        return dict(self.app.current_event.query_string_parameters or {})

    def latest(self, device_id: str) -> dict[str, Any]:
        device = checked_id(device_id, "device_id")
        reading, source = _answer(lambda: self.reads().latest(device))
        return {"device_id": device, "region": self.region, "source": source, "reading": reading}

    def readings(self, device_id: str) -> dict[str, Any]:
        device, query = checked_id(device_id, "device_id"), self.params()
        start, end = checked_time(query, "from"), checked_time(query, "to")
        if start and end and start >= end:
            raise invalid("from", "earlier than to", query["from"])
        limit = checked_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        lo, hi = "R#" + (start or ""), "R#" + end if end else "R$"  # "$" sorts after "#": no upper bound
        scope = {"route": "readings", "device_id": device, "from": start, "to": end}
        after = Cursor.decode(query.get("cursor"), scope, valid=lambda a: isinstance(a, str) and lo <= a <= hi)
        page = _answer(lambda: self.reads().history(device, lo, hi, limit, after))
        if not page.items and after is None and not _answer(lambda: self.reads().known(device)):
            raise ApiError(404, "not_found", f"device {device} has no reading")
        return {
            "device_id": device,
            "region": self.region,
            "readings": page.items,
            "next_cursor": Cursor(scope, page.after).encode() if page.after else None,
        }

    def branches(self) -> dict[str, Any]:
        listing, source = _answer(lambda: self.reads().branches())
        return {
            "region": self.region,
            "source": source,
            "branches": [
                {"branch_id": b, "devices": n, "last_seen": format_epoch_s(ms / 1000)} for b, ms, n in listing
            ],
        }

    def branch_devices(self, branch_id: str) -> dict[str, Any]:
        branch, query = checked_id(branch_id, "branch_id"), self.params()
        limit = checked_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        stale_after = checked_int(query, "stale_after", self.stale_after_s(), 1, 31_536_000)
        scope = {"route": "branch_devices", "branch_id": branch}
        after = Cursor.decode(query.get("cursor"), scope, valid=_is_position)
        page = _answer(lambda: self.reads().branch_devices(branch, limit, tuple(after) if after else None))
        now_ms = self.now_s() * 1000
        return {
            "branch_id": branch,
            "region": self.region,
            "source": page.source,
            "stale_after": stale_after,
            "devices": [
                {
                    "device_id": e.device_id,
                    "last_seen": e.reading.get("ts"),
                    "stale": now_ms - e.last_seen_ms > stale_after * 1000,
                    "reading": e.reading,
                }
                for e in page.items
            ],
            "next_cursor": Cursor(scope, list(page.after)).encode() if page.after else None,
        }

    def report(self, branch_id: str) -> dict[str, Any]:
        branch, period = checked_id(branch_id, "branch_id"), checked_period(self.params(), self.now_s())
        document, source = _answer(lambda: self.reads().report(branch, period))
        return {"branch_id": branch, "period": period, "region": self.region, "source": source, "report": document}

    def health(self) -> Response[str]:
        def table() -> None:
            self.reads().known("-health-check-")  # a GetItem: the permission the API has anyway

        checks = {"redis": _timed(lambda: self.reads().cache.redis.ping()), "table": _timed(table)}  # noqa: PLW0108
        status = "ok" if all(c["ok"] for c in checks.values()) else "degraded"
        if not checks["table"]["ok"]:
            status = "unavailable"
        headers = dict(_SECURITY_HEADERS)
        if status == "unavailable":
            headers["Retry-After"] = str(RETRY_AFTER_S)
        body = {"status": status, "region": self.region, "version": self.version, "checks": checks}
        return Response(503 if status == "unavailable" else 200, _JSON, _dumps(body), headers)

    def dashboard(self) -> Response[str]:
        html = self.dashboard_html()
        return Response(200, "text/html; charset=utf-8", html, page_html_headers(html))

    def not_found(self, _: Exception) -> Response[str]:
        event = self.app.current_event
        return ApiError(404, "not_found", f"no route {event.request_context.http.method} {event.raw_path}").response()

    def bug(self, exc: Exception) -> Response[str]:
        logger.exception("read failed", extra={"route": self.app.current_event.route_key})
        return ApiError(500, "internal", "internal error; it has been logged").response()


def _answer(call: Callable[[], Any]) -> Any:
    """Run a read, turning the read layer's outcomes into API errors."""
    try:
        return call()
    except NotFound as exc:
        raise ApiError(404, exc.code, str(exc)) from None
    except Unavailable as exc:
        raise ApiError(503, "unavailable", f"{exc}; retry later", retry_after_s=RETRY_AFTER_S) from exc


def _timed(check: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _is_position(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
        and is_valid_id(value[1])
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
