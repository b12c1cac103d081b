"""The read API over real HTTP: the local API server's HTTP side, then every route of the running local stack
and `devicepipe read ... --local`."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from devicepipe_tools import cli
from devicepipe_tools.local import stack
from devicepipe_tools.local.api_server import ApiServer, Route, respond
from devicepipe_tools.local.files import WAREHOUSE_SNAPSHOT
from devicepipe_tools.local.net import free_port
from devicepipe_tools.local.warehouse_snapshot import reader
from tests.integration.stack_helpers import wait_for

pytestmark = pytest.mark.integration
REGION = "us-east-1"
BRANCH = "rapi-branch"
DEVICES = ("rapi-d1", "rapi-d2")
PER_DEVICE = 5


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body, whatever the status."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


# ----------------------------------------------------------------------------------------------- HTTP side
def tiny_handler(event: dict[str, Any]) -> Any:
    """A stand-in function: echoes its event, or answers as its path asks."""
    if event["rawPath"] == "/boom":
        raise RuntimeError("boom")
    if event["rawPath"] == "/png":
        return {
            "statusCode": 200,
            "headers": {"content-type": "image/png"},
            "body": "iVBORw==",
            "isBase64Encoded": True,
        }
    return {"statusCode": 201, "headers": {"x-route": event["routeKey"]}, "cookies": ["a=1"], "body": json.dumps(event)}


@pytest.fixture(scope="module")
def tiny_api() -> Iterator[str]:
    table = [Route("GET", "/things/{id}", "F"), Route("GET", "/boom", "F"), Route("GET", "/png", "F")]
    server = ApiServer(free_port(), partial(respond, table, tiny_handler, REGION))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_reaches_the_handler_as_its_route_and_back(tiny_api: str) -> None:
    status, headers, body = get(f"{tiny_api}/things/a%3Ab?x=1&x=2")
    event = json.loads(body)
    assert (status, headers["x-route"], headers["set-cookie"]) == (201, "GET /things/{id}", "a=1")
    assert headers["content-type"] == "application/json"
    assert event["pathParameters"] == {"id": "a:b"}
    assert (event["rawQueryString"], event["queryStringParameters"]) == ("x=1&x=2", {"x": "1,2"})
    assert event["headers"]["host"] == tiny_api.removeprefix("http://")


def test_no_route_failures_and_binary_bodies_over_http(tiny_api: str) -> None:
    assert get(f"{tiny_api}/things/1", "POST")[::2] == (404, b'{"message":"Not Found"}')
    assert get(f"{tiny_api}/things")[::2] == (404, b'{"message":"Not Found"}')
    assert get(f"{tiny_api}/boom")[::2] == (500, b'{"message":"Internal Server Error"}')
    status, headers, body = get(f"{tiny_api}/png")
    assert (status, headers["content-type"], body) == (200, "image/png", base64.b64decode("iVBORw=="))
    status, headers, body = get(f"{tiny_api}/png", "HEAD")  # no HEAD route: HTTP API does not derive one
    assert (status, headers["content-length"], body) == (404, "23", b"")  # a HEAD answer has no body


# ----------------------------------------------------------------------------------------------- local stack
@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The local stack with a few readings of two devices of one branch, cached."""
    state_dir = tmp_path_factory.mktemp("stack")
    state = stack.up((REGION,), state_dir)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        lines = [
            json.dumps(
                {
                    "device_id": device,
                    "branch_id": BRANCH,
                    "ts": (now - timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
                    "seq": i,
                    "metrics": {"temp_c": 20 + i, "door": "closed"},
                }
            )
            for device in DEVICES
            for i in range(PER_DEVICE)
        ]
        readings = state_dir / "readings.jsonl"
        readings.write_text("\n".join(lines) + "\n")
        assert cli.main(["produce", "--local", "--file", str(readings), "--state-dir", str(state_dir)]) == cli.EXIT_OK
        url = state["api_urls"][REGION]

        def cached() -> bool:
            answers = [get(f"{url}/devices/{d}/latest") for d in DEVICES]
            return all(s == 200 and json.loads(b)["source"] == "cache" for s, _, b in answers)

        wait_for(cached)
        yield {"state_dir": state_dir, "url": url, "newest": now}
    finally:
        stack.down(state_dir)


def get_json(url: str) -> tuple[int, Any]:
    status, headers, body = get(url)
    assert headers["content-type"].startswith("application/json")
    return status, json.loads(body)


def test_the_stack_records_and_shows_each_regions_api(
    local: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert local["url"].startswith("http://127.0.0.1:")
    assert cli.main(["local", "status", "--state-dir", str(local["state_dir"])]) == cli.EXIT_OK
    assert f"read API {REGION}: {local['url']}" in capsys.readouterr().out


def test_every_route_answers_over_http(local: dict[str, Any]) -> None:
    url = local["url"]
    status, health = get_json(f"{url}/health")
    assert (status, health["status"], health["region"]) == (200, "ok", REGION)

    status, latest = get_json(f"{url}/devices/rapi-d1/latest")
    assert (status, latest["device_id"], latest["source"], latest["region"]) == (200, "rapi-d1", "cache", REGION)
    assert latest["reading"]["seq"] == 0 and latest["reading"]["metrics"] == {"temp_c": 20, "door": "closed"}

    status, page = get_json(f"{url}/devices/rapi-d1/readings?limit=3")
    assert status == 200 and [r["seq"] for r in page["readings"]] == [0, 1, 2]  # newest first
    status, rest = get_json(f"{url}/devices/rapi-d1/readings?limit=3&cursor={page['next_cursor']}")
    assert status == 200 and [r["seq"] for r in rest["readings"]] == [3, 4] and rest["next_cursor"] is None

    status, branches = get_json(f"{url}/branches")
    ours = [b for b in branches["branches"] if b["branch_id"] == BRANCH]
    assert status == 200 and ours[0]["devices"] == len(DEVICES)

    status, branch = get_json(f"{url}/branches/{BRANCH}/devices")
    assert status == 200 and sorted(d["device_id"] for d in branch["devices"]) == sorted(DEVICES)
    assert not any(d["stale"] for d in branch["devices"])

    status, headers, page_html = get(f"{url}/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in page_html.lower()


def test_errors_answer_as_api_gateway_and_the_contract_say(local: dict[str, Any]) -> None:
    url = local["url"]
    status, missing = get_json(f"{url}/devices/nobody-here/latest")
    assert (status, missing["error"]["code"]) == (404, "not_found")
    status, bad = get_json(f"{url}/devices/rapi-d1/readings?limit=ten")
    assert (status, bad["error"]["code"], bad["error"]["field"]) == (400, "invalid_parameter", "limit")
    assert get_json(f"{url}/no/such/route") == (404, {"message": "Not Found"})
    assert get(f"{url}/health", "POST")[::2] == (404, b'{"message":"Not Found"}')


def read(local: dict[str, Any], capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """`devicepipe read ... --local --json`, its JSON."""
    capsys.readouterr()
    assert cli.main(["read", *argv, "--local", "--json", "--state-dir", str(local["state_dir"])]) == cli.EXIT_OK
    return json.loads(capsys.readouterr().out)


def test_the_cli_reads_every_route_of_the_local_stack(
    local: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    latest = read(local, capsys, "latest", "rapi-d2")
    assert latest["reading"]["device_id"] == "rapi-d2" and latest["source"] == "cache"

    history = read(local, capsys, "history", "rapi-d2", "--limit", "2", "--all")
    assert [r["seq"] for r in history["readings"]] == [0, 1, 2, 3, 4] and history["next_cursor"] is None

    assert len(read(local, capsys, "history", "rapi-d2", "--since", "1h")["readings"]) == PER_DEVICE
    since = (local["newest"] - timedelta(seconds=150)).isoformat()
    recent = read(local, capsys, "history", "rapi-d2", "--since", since)
    assert [r["seq"] for r in recent["readings"]] == [0, 1, 2]

    until = (local["newest"] - timedelta(minutes=3)).isoformat()
    older = read(local, capsys, "history", "rapi-d2", "--until", until)
    assert [r["seq"] for r in older["readings"]] == [4]  # `until` is exclusive

    branch = read(local, capsys, "branch", BRANCH, "--limit", "1", "--all")
    assert sorted(d["device_id"] for d in branch["devices"]) == sorted(DEVICES)

    branches = read(local, capsys, "branches")
    assert BRANCH in [b["branch_id"] for b in branches["branches"]]


def test_the_cli_prints_tables_and_one_line_errors(local: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--local", "--state-dir", str(local["state_dir"])]
    assert cli.main(["read", "branch", BRANCH, *argv]) == cli.EXIT_OK
    title, header, *rows = capsys.readouterr().out.splitlines()
    assert title.startswith(f"branch {BRANCH}: 2 devices")
    assert header.split() == ["device", "last", "seen", "age", "stale", "metrics"]
    assert sorted(row.split()[0] for row in rows) == sorted(DEVICES)
    assert cli.main(["read", "latest", "nobody-here", *argv]) == cli.EXIT_FAILED
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["read", "latest", "rapi-d1", *argv, "--region", "eu-west-1"]) == cli.EXIT_USAGE
    assert "serves no read API in eu-west-1" in capsys.readouterr().err


def test_reading_a_stopped_api_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["read", "branches", "--api-url", url]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == f"devicepipe: cannot reach {url}: Connection refused\n"


def test_a_branch_report_from_a_csv_registry_through_the_cli(
    local: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`registry import` (CSV) -> readings loaded -> `local report` -> `read report`: one device registered, one
    not, the day's figures as the readings say."""
    state_dir, folder = str(local["state_dir"]), local["state_dir"]
    (folder / "branches.csv").write_text(
        f"branch_id,name,home_region,time_zone\n{BRANCH},Read API branch,{REGION},UTC\n"
    )
    (folder / "devices.csv").write_text(f"device_id,branch_id,kind\n{DEVICES[0]},{BRANCH},climate\n")
    (folder / "metrics.csv").write_text("kind,metric,unit,low,high\nclimate,temp_c,C,18,22\n")
    files = [f"--{t}={folder / f'{t}.csv'}" for t in ("branches", "devices", "metrics")]
    assert cli.main(["registry", "import", *files, "--local", "--state-dir", state_dir]) == cli.EXIT_OK

    day = local["newest"].date()
    on_day = [i for i in range(PER_DEVICE) if (local["newest"] - timedelta(minutes=i)).date() == day]
    rows = reader(folder / WAREHOUSE_SNAPSHOT)  # the readers' copy: polling the live file would hold the loader up
    snapshot = folder / WAREHOUSE_SNAPSHOT

    def loaded() -> bool:
        return (
            snapshot.exists()
            and len(rows.query(f"SELECT 1 FROM readings WHERE branch_id = '{BRANCH}'")) == 2 * PER_DEVICE
        )

    wait_for(loaded, 120)

    assert cli.main(["local", "report", "--period", day.isoformat(), "--state-dir", state_dir]) == cli.EXIT_OK
    assert "1 report due: 1 written" in capsys.readouterr().out
    report = read(local, capsys, "report", BRANCH, "--period", day.isoformat())["report"]
    summary = report["summary"]
    assert (summary["readings"], summary["devices_expected"], summary["unregistered_devices"]) == (
        2 * len(on_day),
        1,
        [DEVICES[1]],
    )
    temp = next(d for d in report["devices"] if d["device_id"] == DEVICES[0])["metrics"]["temp_c"]
    assert (temp["count"], temp["min"], temp["max"]) == (len(on_day), 20 + min(on_day), 20 + max(on_day))
    assert temp["out_of_range"] == sum(1 for i in on_day if not 18 <= 20 + i <= 22)
    # A second run finds nothing new: nothing written, nothing sent.
    assert cli.main(["local", "report", "--period", day.isoformat(), "--state-dir", state_dir]) == cli.EXIT_OK
    assert "1 report due: 0 written, 1 unchanged" in capsys.readouterr().out
