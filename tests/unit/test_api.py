"""The read API through its resolver: routes, input rules, cursors, errors, cache-aside (fakeredis, moto
in-process: no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import fakeredis
import pytest
import redis
from moto import mock_aws
from redis.backoff import NoBackoff
from redis.retry import Retry

from devicepipe.api import Cursor, build_app
from devicepipe.cache import CacheWriter, update_from_item
from devicepipe.dynamo import latest_item, reading_item
from devicepipe.models import parse_reading
from devicepipe.reads import Reads
from devicepipe_tools.events import http_api_event, reading, table_item
from devicepipe_tools.template import create_table_kwargs
from tests.conftest import FakeLambdaContext

NOW_S = 1_793_613_600.0  # 2026-11-02T10:00:00Z
TABLE = "readings"
TTL_S = 3650 * 86_400  # expiry must lie ahead of the real clock: Redis expires the cached reading with it
LATEST = "/devices/{device_id}/latest"
READINGS = "/devices/{device_id}/readings"
DEVICES = "/branches/{branch_id}/devices"


class Api:
    """The resolver over a moto table and a fake Redis; records cache lookups."""

    def __init__(self, ddb: Any, redis_client: Any) -> None:
        self.ddb = ddb
        self.lookups: list[tuple[str, str]] = []
        self.writer = CacheWriter(redis_client, prefix="t")
        self.reads = Reads(self.writer, ddb, TABLE, on_lookup=lambda k, o: self.lookups.append((k, o)))
        page = "<!doctype html><script>draw()</script>"
        self.app = build_app(lambda: self.reads, "us-east-1", "9.9.9", lambda: 900, lambda: page, lambda: NOW_S)

    def get(self, route: str, query: str = "", **params: str) -> tuple[int, Any, dict[str, str]]:
        event = http_api_event(
            "GET", route.format(**params), route_key=f"GET {route}", path_parameters=params or None, query=query
        )
        answer = self.app.resolve(event, FakeLambdaContext())  # type: ignore[arg-type]
        body = answer["body"]
        is_json = answer["headers"]["Content-Type"] == "application/json"
        return answer["statusCode"], json.loads(body) if is_json else body, answer["headers"]

    def store(self, device: str, branch: str, ts: str, seq: int = 0, latest: bool = True, **metrics: Any) -> None:
        r = parse_reading(reading(device, branch, ts, seq, **metrics), now_s=NOW_S)
        self.ddb.put_item(
            TableName=TABLE,
            Item=reading_item(r.attributes, r.epoch_s, {"S": "us-east-1"}, {"S": "2026-11-02T10:00:00Z"}, TTL_S),
        )
        if latest:
            self.ddb.put_item(TableName=TABLE, Item=latest_item(r))


@pytest.fixture
def api(template: dict[str, Any]) -> Iterator[Api]:
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))
        yield Api(ddb, fakeredis.FakeRedis())


def error(body: dict[str, Any]) -> dict[str, Any]:
    return body["error"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ latest


def test_latest_is_read_from_the_table_on_a_miss_then_from_the_cache(api: Api) -> None:
    api.store("dev-1", "br-1", "2026-11-02T09:00:00Z", 3, temp=21.5)
    status, first, _ = api.get(LATEST, device_id="dev-1")
    status2, second, _ = api.get(LATEST, device_id="dev-1")
    assert (status, first["source"], status2, second["source"]) == (200, "table", 200, "cache")
    assert first["reading"] == second["reading"]
    assert first["reading"]["ts"] == "2026-11-02T09:00:00.000000Z" and first["reading"]["metrics"] == {"temp": 21.5}
    assert "pk" not in first["reading"] and "expires_at" not in first["reading"]
    assert list(first["reading"])[:5] == ["device_id", "branch_id", "ts", "seq", "metrics"]
    assert api.lookups == [("latest", "miss"), ("latest", "hit")]


def test_a_fill_from_the_table_never_replaces_a_newer_cached_reading(api: Api) -> None:
    # Given the cache updater already cached a newer reading than the table's LATEST (replication lag)
    api.store("dev-1", "br-1", "2026-11-02T09:00:00Z")
    newer = table_item(reading("dev-1", "br-1", "2026-11-02T09:30:00Z", 0), latest=True)
    api.writer.apply([update_from_item(newer, str(newer["latest_at"]))])
    # When the branch is read whole from the table (its view is not loaded) and written back
    status, body, _ = api.get(DEVICES, branch_id="br-1")
    # Then the newer cached reading stays and is what the API answers
    assert status == 200 and body["source"] == "table"
    assert api.get(LATEST, device_id="dev-1")[1]["reading"]["ts"] == "2026-11-02T09:30:00.000000Z"


def test_unknown_device_is_404_and_a_bad_id_400_naming_the_field(api: Api) -> None:
    status, body, _ = api.get(LATEST, device_id="nobody")
    assert status == 404 and error(body)["code"] == "not_found"
    status, body, _ = api.get(LATEST, device_id="dev%20bad")
    assert status == 400
    assert error(body)["field"] == "device_id" and "[A-Za-z0-9._:-]" in error(body)["rule"]


# ------------------------------------------------------------------------------------ history


def test_history_pages_newest_first_with_no_empty_last_page(api: Api) -> None:
    for minute in range(25):
        api.store("dev-1", "br-1", f"2026-11-02T09:{minute:02d}:00Z", latest=minute == 24)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        status, body, _ = api.get(READINGS, "limit=10" + (f"&cursor={cursor}" if cursor else ""), device_id="dev-1")
        assert status == 200
        pages += 1
        seen += [r["ts"] for r in body["readings"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 25 == len(set(seen)) and seen == sorted(seen, reverse=True)
    # exactly two full pages: the second says it is the last
    status, body, _ = api.get(READINGS, "limit=12&from=2026-11-02T09:01:00Z", device_id="dev-1")
    status, body, _ = api.get(
        READINGS, f"limit=12&from=2026-11-02T09:01:00Z&cursor={body['next_cursor']}", device_id="dev-1"
    )
    assert len(body["readings"]) == 12 and body["next_cursor"] is None


def test_history_range_includes_from_and_excludes_to_in_either_time_form(api: Api) -> None:
    for minute in range(5):
        api.store("dev-1", "br-1", f"2026-11-02T09:0{minute}:00Z", seq=minute)
    query = "from=2026-11-02T10:01:00%2B01:00&to=1793610180000"  # 09:01 (as +01:00) .. 09:03 (epoch ms)
    status, body, _ = api.get(READINGS, query, device_id="dev-1")
    assert status == 200 and [r["seq"] for r in body["readings"]] == [2, 1]


def test_known_device_with_an_empty_range_is_200_an_unknown_one_404(api: Api) -> None:
    api.store("dev-1", "br-1", "2026-11-02T09:00:00Z")
    status, body, _ = api.get(READINGS, "from=2026-11-02T09:30:00Z", device_id="dev-1")
    assert (status, body["readings"], body["next_cursor"]) == (200, [], None)
    assert api.get(READINGS, device_id="nobody")[0] == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=1,2", "limit"),
        ("from=yesterday", "from"),
        ("to=1999-12-31T23:59:59Z", "to"),
        ("from=2026-11-02T09:00:00", "from"),  # no zone
        ("from=2026-11-02T10:00:00Z&to=2026-11-02T09:00:00Z", "from"),
        ("cursor=not-a-cursor!", "cursor"),
        ("cursor=e30", "cursor"),  # {} : valid base64 and JSON, not a cursor
    ],
)
def test_bad_history_parameters_are_400_with_field_and_rule(api: Api, query: str, field: str) -> None:
    api.store("dev-1", "br-1", "2026-11-02T09:00:00Z")
    status, body, _ = api.get(READINGS, query, device_id="dev-1")
    assert status == 400, body
    assert error(body)["field"] == field and error(body)["rule"] and field in error(body)["message"]


def test_a_cursor_is_bound_to_its_device_and_time_range(api: Api) -> None:
    for minute in range(3):
        api.store("dev-1", "br-1", f"2026-11-02T09:0{minute}:00Z")
        api.store("dev-2", "br-1", f"2026-11-02T09:0{minute}:00Z")
    cursor = api.get(READINGS, "limit=1", device_id="dev-1")[1]["next_cursor"]
    assert api.get(READINGS, f"limit=1&cursor={cursor}", device_id="dev-1")[0] == 200
    assert api.get(READINGS, f"limit=1&cursor={cursor}", device_id="dev-2")[0] == 400
    assert api.get(READINGS, f"limit=1&from=2026-11-02T09:01:00Z&cursor={cursor}", device_id="dev-1")[0] == 400
    forged = Cursor({"route": "readings", "device_id": "dev-1", "from": None, "to": None}, "LATEST").encode()
    assert api.get(READINGS, f"cursor={forged}", device_id="dev-1")[0] == 400


# ------------------------------------------------------------------------------------ branches


def test_branch_devices_page_by_last_seen_and_mark_stale_devices(api: Api) -> None:
    # 09:50 and 09:55 are fresh at 10:00 with 900 s; 09:00 .. 09:02 are stale
    for i, ts in enumerate(["09:00", "09:01", "09:02", "09:50", "09:55"]):
        api.store(f"dev-{i}", "br-1", f"2026-11-02T{ts}:00Z")
    api.store("other", "br-2", "2026-11-02T09:59:00Z")
    listed: list[tuple[str, bool]] = []
    cursor = None
    for expected_source in ("table", "cache", "cache"):
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, body, _ = api.get(DEVICES, query, branch_id="br-1")
        assert status == 200 and body["source"] == expected_source and body["stale_after"] == 900
        listed += [(d["device_id"], d["stale"]) for d in body["devices"]]
        assert all(d["reading"]["branch_id"] == "br-1" for d in body["devices"])
        cursor = body["next_cursor"]
    assert cursor is None
    assert listed == [("dev-4", False), ("dev-3", False), ("dev-2", True), ("dev-1", True), ("dev-0", True)]
    status, body, _ = api.get(DEVICES, "stale_after=36000", branch_id="br-1")
    assert not any(d["stale"] for d in body["devices"])


def test_branch_devices_read_the_table_for_devices_redis_lost(api: Api) -> None:
    for i in range(3):
        api.store(f"dev-{i}", "br-1", f"2026-11-02T09:0{i}:00Z")
    api.get(DEVICES, branch_id="br-1")  # loads the branch view
    api.writer.redis.delete("t:device:dev-1")  # evicted
    status, body, _ = api.get(DEVICES, branch_id="br-1")
    assert status == 200 and body["source"] == "cache"
    assert [d["device_id"] for d in body["devices"]] == ["dev-2", "dev-1", "dev-0"]
    assert api.writer.redis.exists("t:device:dev-1")  # written back


def test_unknown_branch_is_404_and_a_cursor_of_another_branch_400(api: Api) -> None:
    for i in range(3):
        api.store(f"dev-{i}", "br-1", f"2026-11-02T09:0{i}:00Z")
    assert api.get(DEVICES, branch_id="br-9")[0] == 404
    cursor = api.get(DEVICES, "limit=1", branch_id="br-1")[1]["next_cursor"]
    assert api.get(DEVICES, f"cursor={cursor}", branch_id="br-2")[0] == 400
    assert api.get(DEVICES, "stale_after=0", branch_id="br-1")[0] == 400


def test_branches_list_devices_and_last_seen_from_the_table_then_the_cache(api: Api) -> None:
    api.store("a", "br-1", "2026-11-02T09:00:00Z")
    api.store("b", "br-1", "2026-11-02T09:10:00Z")
    api.store("c", "br-2", "2026-11-02T09:20:00Z")
    first, second = api.get("/branches")[1], api.get("/branches")[1]
    assert (first["source"], second["source"]) == ("table", "cache")
    expected = [
        {"branch_id": "br-2", "devices": 1, "last_seen": "2026-11-02T09:20:00.000000Z"},
        {"branch_id": "br-1", "devices": 2, "last_seen": "2026-11-02T09:10:00.000000Z"},
    ]
    # the cache's per-branch device counts come from the branch views the fill wrote
    assert first["branches"] == expected == second["branches"]


# ------------------------------------------------------------------------------------ failures, health, page


def down_redis() -> redis.Redis:
    return redis.Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 1))


def test_redis_down_degrades_to_table_reads_counted(template: dict[str, Any]) -> None:
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))
        api = Api(ddb, down_redis())
        api.store("dev-1", "br-1", "2026-11-02T09:00:00Z")
        status, body, _ = api.get(LATEST, device_id="dev-1")
        assert (status, body["source"]) == (200, "table")
        status, body, _ = api.get(DEVICES, branch_id="br-1")
        assert (status, body["source"], len(body["devices"])) == (200, "table", 1)
        assert ("latest", "error") in api.lookups and ("branch", "error") in api.lookups
        status, body, _ = api.get("/health")
        assert status == 200 and body["status"] == "degraded" and not body["checks"]["redis"]["ok"]


def test_redis_and_table_down_is_503_with_retry_after() -> None:
    from botocore.config import Config

    dead = boto3.client(
        "dynamodb",
        endpoint_url="http://127.0.0.1:1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=0.2, read_timeout=0.2),
    )
    api = Api(dead, down_redis())
    for route, params in ((LATEST, {"device_id": "d"}), (READINGS, {"device_id": "d"}), (DEVICES, {"branch_id": "b"})):
        status, body, headers = api.get(route, **params)
        assert status == 503 and error(body)["code"] == "unavailable" and headers["Retry-After"] == "5", route
    status, body, headers = api.get("/health")
    assert status == 503 and body["status"] == "unavailable" and headers["Retry-After"] == "5"


def test_health_reports_region_version_and_checks(api: Api) -> None:
    status, body, _ = api.get("/health")
    assert status == 200 and body["status"] == "ok"
    assert (body["region"], body["version"]) == ("us-east-1", "9.9.9")
    assert body["checks"]["redis"]["ok"] and body["checks"]["table"]["ok"]


def test_dashboard_is_html_whose_policy_allows_exactly_its_inline_script(api: Api) -> None:
    status, body, headers = api.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "draw()" in body
    policy = headers["Content-Security-Policy"]
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]


def test_unknown_route_and_bugs_answer_json_without_a_traceback(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    status, body, _ = api.get("/nowhere")
    assert status == 404 and error(body)["code"] == "not_found"

    def broken(device_id: str) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(api.reads, "latest", broken)
    status, body, _ = api.get(LATEST, device_id="dev-1")
    assert status == 500 and error(body)["code"] == "internal" and "KeyError" not in json.dumps(body)


def test_after_redis_fails_reads_skip_it_for_a_while_then_try_again(template: dict[str, Any]) -> None:
    calls = []

    class DeadPipeline:
        def __getattr__(self, command: str) -> Any:
            return lambda *args, **kwargs: None

        def execute(self) -> None:
            calls.append(1)
            raise redis.ConnectionError("down")

    class CountingDeadRedis(fakeredis.FakeRedis):
        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            return DeadPipeline()

    now = [0.0]
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(**create_table_kwargs(template, "ReadingsTable", TABLE))
        api = Api(ddb, CountingDeadRedis())
        api.reads.clock = lambda: now[0]
        api.store("dev-1", "br-1", "2026-11-02T09:00:00Z")
        for _ in range(3):
            assert api.get(LATEST, device_id="dev-1")[1]["source"] == "table"
        assert len(calls) == 1  # the first request found Redis down; the next two did not wait on it
        now[0] = 6.0
        api.get(LATEST, device_id="dev-1")
        assert len(calls) == 2


def test_every_answer_says_not_to_sniff_or_store_it(api: Api) -> None:
    api.store("dev-1", "br-1", "2026-11-02T09:00:00Z")
    for route, params in ((LATEST, {"device_id": "dev-1"}), (LATEST, {"device_id": "nobody"}), ("/branches", {})):
        headers = api.get(route, **params)[2]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store", route


# ------------------------------------------------------------------------------------ branch reports

REPORT = "/branches/{branch_id}/report"
REPORTS_BUCKET = "reports"


def with_reports(api: Api, s3: Any) -> Api:
    """The same API, its reads given the reports bucket."""
    api.reads = Reads(
        api.writer,
        api.ddb,
        TABLE,
        on_lookup=lambda k, o: api.lookups.append((k, o)),
        s3=s3,
        reports_bucket=REPORTS_BUCKET,
    )
    return api


def store_report(s3: Any, branch: str, period: str, readings: int = 10) -> dict[str, Any]:
    from devicepipe.delivery import report_key

    doc = {"schema": 1, "branch_id": branch, "period": period, "summary": {"readings": readings}}
    s3.put_object(Bucket=REPORTS_BUCKET, Key=report_key(branch, period, "json"), Body=json.dumps(doc).encode())
    return doc


@pytest.fixture
def report_api(api: Api) -> Iterator[tuple[Api, Any]]:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=REPORTS_BUCKET)
    yield with_reports(api, s3), s3


def test_a_report_is_served_from_the_bucket_then_from_redis_for_a_while(report_api: tuple[Api, Any]) -> None:
    api, s3 = report_api
    doc = store_report(s3, "br-1", "2026-11-01")
    status, first, _ = api.get(REPORT, "period=2026-11-01", branch_id="br-1")
    assert status == 200 and (first["source"], first["report"]) == ("store", doc)
    assert (first["branch_id"], first["period"], first["region"]) == ("br-1", "2026-11-01", "us-east-1")
    s3.delete_object(Bucket=REPORTS_BUCKET, Key="reports/branch=br-1/period=2026-11-01/report.json")
    status, second, _ = api.get(REPORT, "period=2026-11-01", branch_id="br-1")
    assert (status, second["source"], second["report"]) == (200, "cache", doc)  # one Redis GET, no S3
    assert 0 < api.writer.redis.ttl("t:report:br-1:2026-11-01") <= 300
    assert api.lookups == [("report", "miss"), ("report", "hit")]


def test_the_period_defaults_to_yesterday_utc(report_api: tuple[Api, Any]) -> None:
    api, s3 = report_api
    store_report(s3, "br-1", "2026-11-01")  # NOW_S is 2026-11-02T10:00:00Z
    status, body, _ = api.get(REPORT, branch_id="br-1")
    assert (status, body["period"]) == (200, "2026-11-01")


def test_a_report_not_stored_yet_is_404_with_a_hint(report_api: tuple[Api, Any]) -> None:
    api, _ = report_api
    status, body, headers = api.get(REPORT, "period=2026-11-01", branch_id="br-9")
    assert status == 404 and error(body)["code"] == "report_not_found"
    assert "written after the day ends" in error(body)["message"] and headers["Content-Type"] == "application/json"
    assert api.writer.redis.get("t:report:br-9:2026-11-01") is None  # an absence is not cached


@pytest.mark.parametrize("period", ["2026-02-30", "20261101", "2026-W44-7", "yesterday", "2026-11-1", ""])
def test_a_bad_period_is_400_naming_the_field(report_api: tuple[Api, Any], period: str) -> None:
    api, _ = report_api
    status, body, _ = api.get(REPORT, f"period={period}", branch_id="br-1")
    assert status == 400 and error(body)["field"] == "period" and error(body)["rule"] == "a date YYYY-MM-DD"
    status, body, _ = api.get(REPORT, "period=2026-11-01", branch_id="br%201")
    assert status == 400 and error(body)["field"] == "branch_id"


def test_reports_are_read_from_the_bucket_while_redis_is_down(template: dict[str, Any]) -> None:
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=REPORTS_BUCKET)
        api = with_reports(Api(boto3.client("dynamodb"), down_redis()), s3)
        doc = store_report(s3, "br-1", "2026-11-01")
        status, body, _ = api.get(REPORT, "period=2026-11-01", branch_id="br-1")
        assert (status, body["source"], body["report"]) == (200, "store", doc)
        assert api.lookups == [("report", "error")]


def test_reports_bucket_down_is_503_with_retry_after() -> None:
    from botocore.config import Config

    dead = Config(retries={"max_attempts": 1}, connect_timeout=0.2, read_timeout=0.2)
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:1", config=dead)
    api = with_reports(Api(boto3.client("dynamodb", endpoint_url="http://127.0.0.1:1"), fakeredis.FakeRedis()), s3)
    status, body, headers = api.get(REPORT, "period=2026-11-01", branch_id="br-1")
    assert status == 503 and error(body)["code"] == "unavailable" and headers["Retry-After"] == "5"


def test_a_read_api_without_a_reports_bucket_answers_500_and_logs_it(api: Api) -> None:
    status, body, _ = api.get(REPORT, "period=2026-11-01", branch_id="br-1")
    assert status == 500 and error(body)["code"] == "internal"
