"""The shared tracer: powertools' Tracer (and the X-Ray SDK) only where it traces, a no-op stand-in elsewhere."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from devicepipe.observability import NoTracer, make_tracer, tracing_enabled
from devicepipe_tools.template import ROOT
from tests.conftest import run_python

TRACE_ID = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "1"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_CHALICE_CLI_MODE": "true"}, False),
        ({}, False),  # outside Lambda: tests, the local stack, benchmarks
    ],
)
def test_tracing_is_on_where_powertools_would_trace(env: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(env) is enabled
    assert isinstance(make_tracer(env), NoTracer) is not enabled


def test_the_stand_in_decorators_return_the_function_itself() -> None:
    tracer = NoTracer()

    def handler(event: Any, context: Any) -> str:
        return "done"

    assert tracer.capture_lambda_handler(handler) is handler
    assert tracer.capture_lambda_handler(capture_response=False)(handler) is handler
    assert tracer.capture_method(handler) is handler
    assert tracer.capture_method(capture_error=False)(handler) is handler
    tracer.put_annotation("k", "v")
    tracer.put_metadata("k", {"v": 1})


def test_with_tracing_off_no_function_loads_the_xray_sdk() -> None:
    functions = sorted(p.parent.name for p in (ROOT / "functions").glob("*/app.py"))
    out = run_python(
        "import importlib, sys\n"
        f"for name in {functions!r}:\n"
        "    importlib.import_module(f'functions.{name}.app')\n"
        "from devicepipe.observability import tracer\n"
        "print(type(tracer).__name__, 'aws_xray_sdk' in sys.modules)",
        POWERTOOLS_TRACE_DISABLED="true",
    )
    assert out.split() == ["NoTracer", "False"]


def xray_daemon() -> tuple[socket.socket, str]:
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(10)
    return daemon, f"127.0.0.1:{daemon.getsockname()[1]}"


def received(daemon: socket.socket, until: Callable[[str], bool]) -> list[str]:
    documents: list[str] = []
    while not documents or not until(documents[-1]):
        documents.append(daemon.recv(65_536).decode())
    return documents


def test_with_tracing_on_in_lambda_the_handler_is_traced() -> None:
    # Given a Lambda environment (as template.yaml's Tracing: Active gives) and an X-Ray daemon on loopback
    daemon, address = xray_daemon()
    with daemon:
        # When a function's handler runs there
        out = run_python(
            "import sys\n"
            "from functions.stager import app\n"
            "from devicepipe.observability import tracer\n"
            "print(type(tracer).__name__, 'aws_xray_sdk' in sys.modules)\n"
            "@tracer.capture_lambda_handler\n"
            "def handler(event, context):\n"
            "    return {'ok': True}\n"
            "print(handler({}, None))",
            LAMBDA_TASK_ROOT=str(ROOT),
            AWS_LAMBDA_FUNCTION_NAME="devicepipe-stager",
            _X_AMZN_TRACE_ID=TRACE_ID,
            AWS_XRAY_DAEMON_ADDRESS=address,
        )
        documents = received(daemon, until=lambda d: "## handler" in d)
    # Then powertools' Tracer is in place and the handler's subsegment reaches the daemon in the invocation's trace
    assert out.split("\n")[:2] == ["Tracer True", "{'ok': True}"]
    assert "1-5759e988-bd862e3fe1be46a994272793" in documents[-1]
