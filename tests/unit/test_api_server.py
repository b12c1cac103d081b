"""The local API server's routing, events and responses, as API Gateway HTTP API (payload 2.0) does them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from devicepipe_tools.local.api_server import (
    INTERNAL_ERROR,
    NOT_FOUND,
    Request,
    Response,
    Route,
    http_response,
    match,
    respond,
    routes,
)

READ_ROUTES = [
    "GET /",
    "GET /health",
    "GET /devices/{device_id}/latest",
    "GET /devices/{device_id}/readings",
    "GET /branches",
    "GET /branches/{branch_id}/devices",
    "GET /branches/{branch_id}/report",
]


def test_routes_are_the_templates_http_api_events(template: dict[str, Any]) -> None:
    table = routes(template)
    assert sorted(r.key for r in table) == sorted(READ_ROUTES)
    assert {r.function for r in table} == {"ReadApiFunction"}


@pytest.mark.parametrize(
    ("method", "path", "key", "params"),
    [
        ("GET", "/", "GET /", {}),
        ("GET", "/health", "GET /health", {}),
        ("GET", "/devices/dev-1/latest", "GET /devices/{device_id}/latest", {"device_id": "dev-1"}),
        ("GET", "/devices/a%3Ab/readings", "GET /devices/{device_id}/readings", {"device_id": "a:b"}),
        ("GET", "/branches/b-1/devices", "GET /branches/{branch_id}/devices", {"branch_id": "b-1"}),
    ],
)
def test_requests_match_their_route_with_decoded_path_parameters(
    template: dict[str, Any], method: str, path: str, key: str, params: dict[str, str]
) -> None:
    found = match(routes(template), method, path)
    assert found is not None
    assert (found[0].key, found[1]) == (key, params)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nowhere"),
        ("GET", "/devices/dev-1"),  # too short
        ("GET", "/devices/dev-1/latest/more"),  # too long
        ("GET", "/devices//latest"),  # a parameter is never empty
        ("GET", "/health/"),  # segments are exact
        ("POST", "/health"),  # the path exists, not for this method: HTTP API answers 404 too
        ("DELETE", "/devices/dev-1/latest"),
    ],
)
def test_no_route_for_the_method_and_path_is_none(template: dict[str, Any], method: str, path: str) -> None:
    assert match(routes(template), method, path) is None


def test_the_most_specific_route_wins() -> None:
    table = [
        Route("ANY", "$default", "F"),
        Route("ANY", "/pets/{id}", "F"),
        Route("GET", "/pets/{proxy+}", "F"),
        Route("GET", "/pets/{id}", "F"),
        Route("GET", "/pets/dog", "F"),
    ]

    def key(method: str, path: str) -> str:
        found = match(table, method, path)
        assert found is not None
        return found[0].key

    assert key("GET", "/pets/dog") == "GET /pets/dog"  # literal before variable
    assert key("GET", "/pets/cat") == "GET /pets/{id}"  # variable before greedy
    assert key("POST", "/pets/cat") == "ANY /pets/{id}"  # a method before ANY
    assert key("GET", "/pets/cat/kitten") == "GET /pets/{proxy+}"
    assert match(table, "GET", "/pets/cat/kitten")[1] == {"proxy": "cat/kitten"}  # type: ignore[index]
    assert key("PUT", "/owners") == "$default"


def invoke_capturing(result: Any) -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []

    def invoke(event: dict[str, Any]) -> Any:
        events.append(event)
        if isinstance(result, Exception):
            raise result
        return result

    return events, invoke


def test_a_request_becomes_a_payload_2_event(template: dict[str, Any]) -> None:
    events, invoke = invoke_capturing({"statusCode": 200, "body": "{}"})
    request = Request(
        "GET",
        "/devices/dev%3A1/readings?limit=5&from=2026-11-02T09%3A00%3A00Z&limit=6",
        [("Host", "127.0.0.1:8000"), ("X-Thing", "a"), ("x-thing", "b"), ("Cookie", "a=1; b=2")],
    )
    respond(routes(template), invoke, "eu-west-1", request)
    (event,) = events
    assert event["version"] == "2.0"
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "GET /devices/{device_id}/readings"
    assert event["rawPath"] == "/devices/dev%3A1/readings"
    assert event["rawQueryString"] == "limit=5&from=2026-11-02T09%3A00%3A00Z&limit=6"
    assert event["queryStringParameters"] == {"limit": "5,6", "from": "2026-11-02T09:00:00Z"}
    assert event["pathParameters"] == {"device_id": "dev:1"}
    assert event["headers"]["host"] == "127.0.0.1:8000"
    assert event["headers"]["x-thing"] == "a,b"
    assert "cookie" not in event["headers"] and event["cookies"] == ["a=1", "b=2"]
    assert event["requestContext"]["http"]["method"] == "GET"
    assert "body" not in event and event["isBase64Encoded"] is False


def test_a_request_body_is_in_the_event_base64_encoded_when_not_text() -> None:
    events, invoke = invoke_capturing({"statusCode": 200})
    table = [Route("POST", "/x", "F")]
    respond(table, invoke, "us-east-1", Request("POST", "/x", [], b"hello"))
    respond(table, invoke, "us-east-1", Request("POST", "/x", [], b"\xff\x00"))
    assert [(e["body"], e["isBase64Encoded"]) for e in events] == [("hello", False), ("/wA=", True)]


def test_unknown_routes_are_not_found_without_invoking(template: dict[str, Any]) -> None:
    events, invoke = invoke_capturing({"statusCode": 200})
    assert respond(routes(template), invoke, "us-east-1", Request("POST", "/health", [])) == NOT_FOUND
    assert respond(routes(template), invoke, "us-east-1", Request("GET", "/nope?x=1", [])) == NOT_FOUND
    assert events == []
    assert json.loads(NOT_FOUND.body) == {"message": "Not Found"}


def test_a_handler_exception_is_an_internal_server_error(
    template: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, invoke = invoke_capturing(RuntimeError("boom"))
    response = respond(routes(template), invoke, "us-east-1", Request("GET", "/health", []))
    assert response == INTERNAL_ERROR
    assert json.loads(response.body) == {"message": "Internal Server Error"}
    err = capsys.readouterr().err
    assert "GET /health" in err and "RuntimeError: boom" in err  # the traceback goes to the stack log


def test_a_full_result_is_the_response() -> None:
    response = http_response(
        {
            "statusCode": 503,
            "headers": {"Content-Type": "application/json", "Retry-After": 5},
            "cookies": ["a=1; Path=/", "b=2"],
            "body": '{"error": {}}',
            "isBase64Encoded": False,
        }
    )
    assert response == Response(
        503,
        [
            ("content-type", "application/json"),
            ("retry-after", "5"),
            ("set-cookie", "a=1; Path=/"),
            ("set-cookie", "b=2"),
        ],
        b'{"error": {}}',
    )


def test_a_base64_body_is_decoded() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    encoded = base64.b64encode(png).decode()
    result = {"statusCode": 200, "headers": {"content-type": "image/png"}, "body": encoded}
    assert http_response({**result, "isBase64Encoded": True}).body == png
    assert http_response(result).body == encoded.encode()  # not flagged: sent as it is


def test_without_a_content_type_the_answer_is_json() -> None:
    assert http_response({"statusCode": 204}) == Response(204, [("content-type", "application/json")], b"")


@pytest.mark.parametrize(
    ("result", "body"),
    [
        ({"message": "hello"}, b'{"message": "hello"}'),  # a dict without statusCode is the body
        ({"body": "x", "headers": {}}, b'{"body": "x", "headers": {}}'),
        ("Hello from Lambda!", b"Hello from Lambda!"),  # a string is the body as it is
        ([1, 2], b"[1, 2]"),
        (42, b"42"),
        (None, b"null"),
    ],
)
def test_a_result_without_status_code_is_inferred_as_a_200_json_body(result: Any, body: bytes) -> None:
    assert http_response(result) == Response(200, [("content-type", "application/json")], body)


@pytest.mark.parametrize(
    "result",
    [
        {"statusCode": "200", "body": ""},
        {"statusCode": 99},
        {"statusCode": True},
        {"statusCode": 200, "body": {"not": "a string"}},
        {"statusCode": 200, "body": "not base64!", "isBase64Encoded": True},
    ],
)
def test_a_malformed_result_is_refused(result: Any) -> None:
    with pytest.raises(ValueError):
        http_response(result)


def test_a_malformed_result_is_an_internal_server_error(template: dict[str, Any]) -> None:
    _, invoke = invoke_capturing({"statusCode": "oops"})
    assert respond(routes(template), invoke, "us-east-1", Request("GET", "/health", [])) == INTERNAL_ERROR
