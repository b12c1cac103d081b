"""`devicepipe read`: arguments, the HTTP client (signing, errors, pages) and the terminal tables, no network."""

from __future__ import annotations

import argparse
import io
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from devicepipe_tools import cli, read_client
from devicepipe_tools.read_client import NoApi, ReadClient, RequestFailed, deployed_api_url, sigv4

NOW = datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC)
API = "http://127.0.0.1:8123"


class FakeApi:
    """Stands in for ``urllib.request.urlopen``: answers by path and query, records each request."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.requests: list[urllib.request.Request] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> io.BytesIO:
        self.requests.append(request)
        answer = self.answers[request.full_url.removeprefix(API)]
        if isinstance(answer, Exception):
            raise answer
        status, doc = answer if isinstance(answer, tuple) else (200, answer)
        body = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
        if status >= 400:
            raise urllib.error.HTTPError(request.full_url, status, "error", None, io.BytesIO(body))  # type: ignore[arg-type]
        return io.BytesIO(body)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(answers: dict[str, Any]) -> FakeApi:
        fake = FakeApi(answers)
        monkeypatch.setattr(urllib.request, "urlopen", fake)
        return fake

    return install


def reading(device: str, ts: str, seq: int = 0, **metrics: Any) -> dict[str, Any]:
    return {
        "device_id": device,
        "branch_id": "b-1",
        "ts": ts,
        "seq": seq,
        "metrics": metrics,
        "origin_region": "eu-west-1",
    }


# ----------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", "2026-11-02T08:30:00.000000Z"),
        ("1h", "2026-11-02T08:00:00.000000Z"),
        ("2d", "2026-10-31T09:00:00.000000Z"),
        ("90s", "2026-11-02T08:58:30.000000Z"),
        ("2026-11-01T10:00:00Z", "2026-11-01T10:00:00.000000Z"),
        ("2026-11-01T10:00:00.5+01:00", "2026-11-01T09:00:00.500000Z"),
    ],
)
def test_since_and_until_take_durations_ago_or_rfc3339_times(text: str, expected: str) -> None:
    assert cli._when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1w", "-1h", "2026-11-01T10:00:00", "2026-13-01T00:00:00Z"])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli._when(text, NOW)


def test_a_bad_time_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["read", "history", "dev-1", "--since", "2026-11-01T10:00:00", "--api-url", API])
    assert info.value.code == 2
    assert "needs a zone" in capsys.readouterr().err


def test_history_sends_its_range_and_page_size(api: Any) -> None:
    query = "from=2026-11-01T10%3A00%3A00.000000Z&to=2026-11-02T00%3A00%3A00.000000Z&limit=5"
    doc: dict[str, Any] = {"device_id": "dev:1", "region": "us-east-1", "readings": [], "next_cursor": None}
    fake = api({f"/devices/dev%3A1/readings?{query}": doc})
    argv = ["read", "history", "dev:1", "--since", "2026-11-01T10:00:00Z", "--until", "2026-11-02T00:00:00Z"]
    assert cli.main([*argv, "--limit", "5", "--api-url", API]) == cli.EXIT_OK
    assert len(fake.requests) == 1
    assert fake.requests[0].get_header("Authorization") is None  # a loopback URL is not signed


# ----------------------------------------------------------------------------------------------- tables
def device(device_id: str, last_seen: str, stale: bool, **metrics: Any) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "last_seen": last_seen,
        "stale": stale,
        "reading": reading(device_id, "x", **metrics),
    }


HISTORY = {
    "device_id": "dev-1",
    "region": "us-east-1",
    "readings": [
        reading("dev-1", "2026-11-02T08:59:00.000000Z", 12, temp=21.5, door="open"),
        reading("dev-1", "2026-11-02T08:58:00.000000Z", 3, nested={"a": [1, 2]}),
    ],
    "next_cursor": None,
}
BRANCH = {
    "branch_id": "b-1",
    "region": "eu-west-1",
    "source": "cache",
    "stale_after": 900,
    "devices": [
        device("d1", "2026-11-02T08:59:15.000000Z", False, t=1),
        device("dev-22", "2026-11-01T05:00:00.000000Z", True),
    ],
    "next_cursor": None,
}
BRANCHES = {
    "region": "us-east-1",
    "source": "table",
    "branches": [{"branch_id": "b-1", "devices": 12, "last_seen": "2026-11-02T07:54:30.000000Z"}],
}
LATEST = {
    "region": "us-east-1",
    "source": "cache",
    "reading": reading("d1", "2026-11-02T08:55:00.000000Z", 7, temp=21.5, door="closed"),
}


@pytest.mark.parametrize(
    ("render", "doc", "lines"),
    [
        (
            cli._render_history,  # time, seq and metrics
            HISTORY,
            [
                "dev-1: 2 readings, newest first (us-east-1)",
                "ts                           seq  metrics",
                "2026-11-02T08:59:00.000000Z  12   temp=21.5 door=open",
                '2026-11-02T08:58:00.000000Z  3    nested={"a":[1,2]}',
            ],
        ),
        (
            cli._render_branch,  # devices with age and stale flag
            BRANCH,
            [
                "branch b-1: 2 devices, most recently seen first (from the cache in eu-west-1; stale after 900 s)",
                "device  last seen                    age    stale  metrics",
                "d1      2026-11-02T08:59:15.000000Z  45s           t=1",
                "dev-22  2026-11-01T05:00:00.000000Z  1d04h  STALE",
            ],
        ),
        (
            cli._render_branches,
            BRANCHES,
            [
                "1 branch (from the table in us-east-1)",
                "branch  devices  last seen                    age",
                "b-1     12       2026-11-02T07:54:30.000000Z  1h05m",
            ],
        ),
        (
            cli._render_latest,
            LATEST,
            [
                "d1  branch b-1  2026-11-02T08:55:00.000000Z (5m00s ago)  seq 7",
                "from the cache in us-east-1; written in eu-west-1",
                "  temp  21.5",
                "  door  closed",
            ],
        ),
    ],
    ids=["history", "branch", "branches", "latest"],
)
def test_answers_read_at_a_glance_on_a_terminal(render: Any, doc: dict[str, Any], lines: list[str]) -> None:
    assert render(doc, NOW).splitlines() == lines


def test_long_metrics_are_cut() -> None:
    text = cli._metrics({f"m{i}": i for i in range(40)})
    assert len(text) == 80 and text.endswith("…")


# ----------------------------------------------------------------------------------------------- requests
def test_sigv4_signs_for_execute_api_in_the_region() -> None:
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/devices/dev-1/latest"
    headers = sigv4("eu-west-1", session)("GET", url)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in headers["Authorization"]
    assert len(headers["X-Amz-Date"]) == 16  # 20261102T090000Z


def test_a_deployed_api_is_signed_and_found_from_its_stack(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the stack's output and the API behind it (samconfig.toml names the stack for eu-west-1)
    looked_up: list[tuple[str, str]] = []

    def lookup(region: str, stack_name: str) -> str:
        looked_up.append((region, stack_name))
        return "https://abc.execute-api.eu-west-1.amazonaws.com"

    signed: list[str] = []

    def sigv4_for(region: str) -> read_client.Auth:
        signed.append(region)
        return lambda method, url: {"Authorization": "AWS4"}

    monkeypatch.setattr(read_client, "deployed_api_url", lookup)
    monkeypatch.setattr(read_client, "sigv4", sigv4_for)
    seen: list[urllib.request.Request] = []

    def urlopen(request: urllib.request.Request, timeout: float) -> io.BytesIO:
        seen.append(request)
        return io.BytesIO(b'{"region": "eu-west-1", "source": "cache", "branches": []}')

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    # When reading with no target
    assert cli.main(["read", "branches", "--region", "eu-west-1", "--json"]) == cli.EXIT_OK
    # Then the stack's URL was used, signed for its region, and the JSON printed as it came
    assert looked_up == [("eu-west-1", "devicepipe")]
    assert signed == ["eu-west-1"]
    assert seen[0].full_url == "https://abc.execute-api.eu-west-1.amazonaws.com/branches"
    assert seen[0].get_header("Authorization") == "AWS4"
    assert json.loads(capsys.readouterr().out)["region"] == "eu-west-1"


def test_a_token_is_sent_as_bearer_instead(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = api({"/branches": {"region": "r", "source": "cache", "branches": []}})
    monkeypatch.setenv("DEVICEPIPE_API_TOKEN", "jwt.token.here")
    assert cli.main(["read", "branches", "--api-url", API + "/"]) == cli.EXIT_OK
    assert fake.requests[0].get_header("Authorization") == "Bearer jwt.token.here"


def test_the_stack_output_is_looked_up() -> None:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    with Stubber(cloudformation) as stub:
        outputs = [{"OutputKey": "ReadApiUrl", "OutputValue": "https://x.execute-api.us-east-1.amazonaws.com"}]
        stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {"StackName": "dp", "CreationTime": NOW, "StackStatus": "CREATE_COMPLETE", "Outputs": outputs}
                ]
            },
            {"StackName": "dp"},
        )
        assert deployed_api_url("us-east-1", "dp", cloudformation) == outputs[0]["OutputValue"]
        stub.add_response(
            "describe_stacks", {"Stacks": [{"StackName": "dp", "CreationTime": NOW, "StackStatus": "CREATE_COMPLETE"}]}
        )
        with pytest.raises(NoApi, match="has no ReadApiUrl output"):
            deployed_api_url("us-east-1", "dp", cloudformation)
        stub.add_client_error("describe_stacks", "ValidationError", "Stack with id dp does not exist")
        with pytest.raises(NoApi, match="stack dp in us-east-1: Stack with id dp does not exist"):
            deployed_api_url("us-east-1", "dp", cloudformation)


def test_stack_names_and_regions_come_from_samconfig() -> None:
    assert cli._stack_name("eu-west-1") == "devicepipe"
    assert cli._stack_name("ap-south-1") == "devicepipe"  # the default env's
    assert read_client.url_region("https://abc.execute-api.eu-west-1.amazonaws.com/x") == "eu-west-1"
    assert read_client.url_region("https://api.example.com") is None
    assert read_client.is_loopback("http://127.0.0.1:1/") and read_client.is_loopback("http://localhost:1")
    assert not read_client.is_loopback("https://api.example.com")


def test_an_api_error_prints_its_message_and_exits_1(api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    error = {"status": 404, "code": "not_found", "message": "device dev-x has no reading"}
    api({"/devices/dev-x/latest": (404, {"error": error})})
    assert cli.main(["read", "latest", "dev-x", "--api-url", API]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == "devicepipe: device dev-x has no reading (HTTP 404, not_found)\n"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, {"message": "Not Found"}, "Not Found (HTTP 404)"),  # API Gateway's own
        (403, {"message": "Forbidden"}, "Forbidden (HTTP 403)"),
        (502, b"<html>Bad Gateway</html>", "HTTP 502: <html>Bad Gateway</html>"),
        (500, b"", "HTTP 500"),
    ],
)
def test_other_error_answers_are_one_line(status: int, body: Any, message: str) -> None:
    assert read_client.error_message(status, body if isinstance(body, bytes) else json.dumps(body).encode()) == message


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), "Connection refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "Connection reset by peer"),
        (urllib.error.URLError("unknown url type"), "unknown url type"),
    ],
)
def test_no_answer_is_one_line_and_exits_1(
    api: Any, capsys: pytest.CaptureFixture[str], error: Exception, message: str
) -> None:
    api({"/branches": error})
    assert cli.main(["read", "branches", "--api-url", API]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == f"devicepipe: cannot reach {API}: {message}\n"


def test_a_timeout_says_how_long(api: Any) -> None:
    api({"/health": TimeoutError("timed out")})
    with pytest.raises(RequestFailed, match=r"no answer from http://127.0.0.1:8123 within 2.5 s"):
        ReadClient(API, timeout_s=2.5).get("/health")


def test_a_non_json_answer_is_an_error(api: Any) -> None:
    api({"/": b"<!doctype html>"})
    with pytest.raises(RequestFailed, match="other than JSON"):
        ReadClient(API).get("/")


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(NoApi, match="must be http"):
        ReadClient("file:///etc/passwd")


def test_local_needs_a_running_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["read", "branches", "--local", "--state-dir", str(tmp_path)]) == cli.EXIT_USAGE
    assert "no local stack is running" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- pages
def test_all_follows_next_cursor_with_progress(api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def page(devices: list[str], cursor: str | None) -> dict[str, Any]:
        rows = [
            {"device_id": d, "last_seen": "2026-11-02T08:00:00.000000Z", "stale": True, "reading": {}} for d in devices
        ]
        return {
            "branch_id": "b-1",
            "region": "r",
            "source": "cache",
            "stale_after": 60,
            "devices": rows,
            "next_cursor": cursor,
        }

    fake = api(
        {
            "/branches/b-1/devices?limit=2&stale_after=60": page(["d1", "d2"], "c1"),
            "/branches/b-1/devices?limit=2&stale_after=60&cursor=c1": page(["d3", "d4"], "c2"),
            "/branches/b-1/devices?limit=2&stale_after=60&cursor=c2": page(["d5"], None),
        }
    )
    argv = ["read", "branch", "b-1", "--limit", "2", "--stale-after", "60", "--all", "--json", "--api-url", API]
    assert cli.main(argv) == cli.EXIT_OK
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [d["device_id"] for d in doc["devices"]] == ["d1", "d2", "d3", "d4", "d5"]
    assert doc["next_cursor"] is None and doc["branch_id"] == "b-1"
    assert len(fake.requests) == 3
    assert err.splitlines() == [
        "page 1: 2 devices so far, fetching the next ...",
        "page 2: 4 devices so far, fetching the next ...",
    ]


def test_one_page_says_there_are_more(api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {
        "device_id": "d1",
        "region": "r",
        "readings": [reading("d1", "2026-11-02T08:00:00.000000Z")],
        "next_cursor": "c",
    }
    api({"/devices/d1/readings": doc})
    assert cli.main(["read", "history", "d1", "--api-url", API]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "d1: 1 reading, newest first (r)"
    assert err == "more pages: --all fetches every one\n"
