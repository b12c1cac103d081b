"""MigrateFunction answers CloudFormation exactly once, by a PUT to the response URL (a local HTTP server here)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from functions.migrate import app
from tests.conftest import FakeLambdaContext


class Capture(HTTPServer):
    """Records each PUT's headers and JSON body; answers ``statuses`` in turn (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.puts: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.statuses = statuses or []

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server: Capture = self.server  # type: ignore[assignment]
                server.puts.append((dict(self.headers), json.loads(body)))
                self.send_response(server.statuses.pop(0) if server.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/cfn-response?X-Amz-Signature=abc"


@pytest.fixture
def server() -> Iterator[Capture]:
    yield from serving()


def serving() -> Iterator[Capture]:
    """A CloudFormation response URL's stand-in, serving until the generator is closed."""
    capture = Capture()
    thread = threading.Thread(target=capture.serve_forever, daemon=True)
    thread.start()
    yield capture
    capture.shutdown()
    capture.server_close()


def context(**kw: Any) -> Any:
    return FakeLambdaContext(**kw)


def request(server: Capture, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "RequestType": kind,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:devicepipe-migrate",
        "ResponseURL": server.url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/devicepipe/1",
        "RequestId": "req-1",
        "ResourceType": "Custom::RegistrySchema",
        "LogicalResourceId": "RegistrySchema",
        "ResourceProperties": {"ServiceToken": "x", "MigrationsHash": "abc"},
    } | extra


def test_create_applies_the_migrations_and_answers_success_with_the_versions(
    server: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "migrate_writer", lambda: ["0001_registry", "0002_indexes"])
    app.lambda_handler(request(server, "Create"), context())
    [(headers, body)] = server.puts
    assert body["Status"] == "SUCCESS" and body["Data"] == {"Applied": "0001_registry,0002_indexes"}
    assert (body["PhysicalResourceId"], body["RequestId"], body["LogicalResourceId"]) == (
        app.PHYSICAL_ID,
        "req-1",
        "RegistrySchema",
    )
    assert body["StackId"].endswith("stack/devicepipe/1")
    assert headers["Content-Type"] == ""  # the URL is signed without one


def test_an_update_with_nothing_new_keeps_the_physical_id(server: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "migrate_writer", list)
    app.lambda_handler(request(server, "Update", PhysicalResourceId="kept-id"), context())
    [(_, body)] = server.puts
    assert (body["Status"], body["PhysicalResourceId"], body["Data"]) == ("SUCCESS", "kept-id", {"Applied": "none"})


def test_delete_answers_success_without_touching_the_registry(server: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    def never() -> list[str]:
        raise AssertionError("Delete must not migrate")

    monkeypatch.setattr(app, "migrate_writer", never)
    app.lambda_handler(request(server, "Delete", PhysicalResourceId=app.PHYSICAL_ID), context())
    assert [body["Status"] for _, body in server.puts] == ["SUCCESS"]


def test_a_failure_answers_failed_with_one_line(server: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise RuntimeError('relation "devices"\n  already exists\tin 0002')

    monkeypatch.setattr(app, "migrate_writer", broken)
    app.lambda_handler(request(server, "Create"), context())
    [(_, body)] = server.puts
    assert body["Status"] == "FAILED"
    assert body["Reason"] == 'RuntimeError: relation "devices" already exists in 0002'
    assert body["PhysicalResourceId"] == app.PHYSICAL_ID  # a rollback's Delete then finds the same id


def test_without_the_secret_setting_the_stack_gets_a_clear_failure(
    server: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_SECRET_ARN", raising=False)
    app.lambda_handler(request(server, "Create"), context())
    [(_, body)] = server.puts
    assert body["Status"] == "FAILED" and "REGISTRY_SECRET_ARN is required" in body["Reason"]


def test_a_hung_migration_is_answered_failed_before_the_timeout(
    server: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    monkeypatch.setattr(app, "migrate_writer", lambda: release.wait(5) and ["late"])
    monkeypatch.setattr(app, "GUARD_MARGIN_S", 0.0)
    worker = threading.Thread(target=app.lambda_handler, args=(request(server, "Create"), context(remaining_ms=200)))
    worker.start()
    deadline = time.monotonic() + 3
    while not server.puts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [body["Status"] for _, body in server.puts] == ["FAILED"]
    assert "timed out" in server.puts[0][1]["Reason"]
    release.set()  # the migration then finishes: its SUCCESS is not sent after the FAILED
    worker.join(5)
    assert len(server.puts) == 1


def test_the_put_is_retried_after_a_server_error_and_fits_the_size_limit(server: Capture) -> None:
    server.statuses = [503]
    responder = app.Responder({"ResponseURL": server.url, "RequestId": "r"})
    assert responder.answer("SUCCESS", data={"Applied": "x" * 10_000})
    assert len(server.puts) == 2 and server.puts[1][1]["Status"] == "SUCCESS"
    assert len(json.dumps(server.puts[1][1]).encode()) <= app.MAX_RESPONSE_BYTES
    assert not responder.answer("FAILED", "again")  # one answer per request


def test_only_http_urls_are_answered() -> None:
    with pytest.raises(ValueError, match="http"):
        app.put_response("file:///etc/passwd", b"{}")
