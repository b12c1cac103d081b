"""A template function's HttpApi routes on a local port: what ``sam local start-api`` does, without Docker.

The stack's supervisor starts one of these per region, with the region's environment and the function's
variables already set (as for the workers). Each request is answered as API Gateway HTTP API answers it:

- the route is chosen from the function's ``HttpApi`` events in template.yaml (exact segments, ``{param}`` one
  segment, ``{param+}`` the rest; an exact method before ``ANY``, a literal segment before a variable, then
  ``$default``); no route for the method and path is ``404 {"message":"Not Found"}``, as HTTP API answers
  even when the path exists for another method;
- the handler gets a payload format 2.0 event (``events.http_api_event``) and its result is read the 2.0 way:
  ``statusCode``, ``headers``, ``cookies`` (one ``set-cookie`` each), ``body``, ``isBase64Encoded``; a result
  without ``statusCode`` is the body of a ``200`` (format inference);
- a handler exception or a malformed result is ``500 {"message":"Internal Server Error"}``, its traceback in
  the stack log.

Invocations are serialised (one warm container: powertools' resolver keeps per-request state in globals).
The standard library's ``ThreadingHTTPServer`` rather than werkzeug: API Gateway's semantics differ from any
framework's (404 for a wrong method, raw path and query passed through untouched), so what a framework adds
would be bypassed, and the HTTP part is a dozen lines.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from devicepipe_tools.events import http_api_event

JSON = "application/json"


@dataclass(frozen=True)
class Route:
    """One ``HttpApi`` event of a function: ``GET /devices/{device_id}/latest``, ``ANY /x``, or ``$default``."""

    method: str
    path: str
    function: str

    @property
    def key(self) -> str:
        """The route key API Gateway puts in the event."""
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    def rank(self) -> tuple[bool, bool, list[int]]:
        """Sorts the most specific first: ``$default`` last, ``ANY`` after a method, then segment by segment
        a literal (0) before ``{param}`` (1) before ``{param+}`` (2)."""
        kinds = [2 if s.endswith("+}") else 1 if s.startswith("{") else 0 for s in self.path.split("/")]
        return self.path == "$default", self.method == "ANY", kinds

    def parameters(self, path: str) -> dict[str, str] | None:
        """The path parameters (URL-decoded, as API Gateway passes them) when ``path`` matches, else None."""
        if self.path == "$default":
            return {}
        want, got = self.path.split("/"), path.split("/")
        params: dict[str, str] = {}
        for i, segment in enumerate(want):
            if segment.startswith("{") and segment.endswith("+}"):
                rest = "/".join(got[i:])
                if not rest:
                    return None
                params[segment[1:-2]] = unquote(rest)
                return params
            if i >= len(got):
                return None
            if segment.startswith("{"):
                if not got[i]:
                    return None
                params[segment[1:-1]] = unquote(got[i])
            elif segment != unquote(got[i]):
                return None
        return params if len(want) == len(got) else None


def routes(template: dict[str, Any]) -> list[Route]:
    """Every ``HttpApi`` event of every ``AWS::Serverless::Function`` (no Path nor Method: ``$default``)."""
    found = []
    for logical_id, spec in template["Resources"].items():
        if spec["Type"] != "AWS::Serverless::Function":
            continue
        for event in spec.get("Properties", {}).get("Events", {}).values():
            if event["Type"] == "HttpApi":
                props = event.get("Properties", {})
                found.append(Route(str(props.get("Method", "ANY")).upper(), props.get("Path", "$default"), logical_id))
    return found


def match(table: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The most specific route for a request, with its path parameters; None when no route matches."""
    for route in sorted(table, key=Route.rank):
        if route.method in (method, "ANY") and (params := route.parameters(path)) is not None:
            return route, params
    return None


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as on the request line
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


NOT_FOUND = Response(404, [("content-type", JSON)], b'{"message":"Not Found"}')
INTERNAL_ERROR = Response(500, [("content-type", JSON)], b'{"message":"Internal Server Error"}')


def event_for(request: Request, route: Route, params: dict[str, str], region: str) -> dict[str, Any]:
    """The payload format 2.0 event of a request: header names lower-case, repeated ones joined with commas,
    cookies in ``cookies``, a body that is not UTF-8 base64-encoded."""
    path, _, query = request.target.partition("?")
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    cookies = headers.pop("cookie", None)
    event = http_api_event(
        request.method,
        path,
        route_key=route.key,
        path_parameters=params or None,
        query=query,
        headers=headers,
        region=region,
        time_epoch_ms=int(time.time() * 1000),
        request_id=uuid.uuid4().hex[:16],
    )
    if cookies:
        event["cookies"] = [c.strip() for c in cookies.split(";")]
    if request.body:
        try:
            event["body"] = request.body.decode()
        except UnicodeDecodeError:
            event["body"], event["isBase64Encoded"] = base64.b64encode(request.body).decode(), True
    return event


def http_response(result: Any) -> Response:
    """API Gateway's reading of a payload format 2.0 result; ``ValueError`` for one it answers 500 to."""
    if not (isinstance(result, dict) and "statusCode" in result):
        body = result if isinstance(result, str) else json.dumps(result)
        return Response(200, [("content-type", JSON)], body.encode())
    status = result["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"statusCode must be an HTTP status, got {status!r}")
    headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    headers.setdefault("content-type", JSON)  # as sam local start-api does
    body = result.get("body") or ""
    if not isinstance(body, str):
        raise ValueError(f"body must be a string, got {type(body).__name__}")
    try:
        raw = base64.b64decode(body, validate=True) if result.get("isBase64Encoded") else body.encode()
    except binascii.Error as exc:
        raise ValueError(f"isBase64Encoded, but the body is not base64: {exc}") from None
    cookies = [("set-cookie", str(c)) for c in result.get("cookies") or []]
    return Response(status, [*headers.items(), *cookies], raw)


Invoke = Callable[[dict[str, Any]], Any]


def respond(table: list[Route], invoke: Invoke, region: str, request: Request) -> Response:
    """One request, start to end, as API Gateway and Lambda would answer it."""
    found = match(table, request.method, request.target.partition("?")[0])
    if found is None:
        return NOT_FOUND
    route, params = found
    try:
        return http_response(invoke(event_for(request, route, params, region)))
    except Exception:  # API Gateway answers 500 whatever went wrong; the log says what
        print(f"local API {region}: {request.method} {request.target} ({route.key}) failed", file=sys.stderr)
        traceback.print_exc()
        return INTERNAL_ERROR


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.server.app(Request(self.command, self.path, list(self.headers.items()), body))
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would flood the stack log (failures are logged by ``respond``)."""


class ApiServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 answering every request with ``app``."""

    daemon_threads = True

    def __init__(self, port: int, app: Callable[[Request], Response]) -> None:
        self.app = app
        super().__init__(("127.0.0.1", port), _Handler)


def main() -> None:
    from devicepipe_tools.local.functions import context_for, function_spec, load_handler
    from devicepipe_tools.template import load_template

    parser = argparse.ArgumentParser(description="a function's HttpApi routes (started by the local stack)")
    parser.add_argument("--region", required=True)
    parser.add_argument("--function", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    template = load_template()
    spec = function_spec(template, args.function)
    handler = load_handler(spec)  # before listening: accepting connections means ready
    container = threading.Lock()

    def invoke(event: dict[str, Any]) -> Any:
        with container:
            return handler(event, context_for(spec, args.region))

    table = [r for r in routes(template) if r.function == args.function]
    server = ApiServer(args.port, partial(respond, table, invoke, args.region))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
