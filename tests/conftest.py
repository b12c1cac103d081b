"""Shared fixtures. AWS credentials are fake and the region fixed, so no test can reach real AWS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "devicepipe",
    "POWERTOOLS_SERVICE_NAME": "tests",
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)

from devicepipe_tools.local.net import free_port, wait_listening  # noqa: E402
from devicepipe_tools.local.postgres import LocalPostgres, PostgresUnavailable, start_postgres  # noqa: E402
from devicepipe_tools.template import ROOT, load_template  # noqa: E402


@dataclass
class FakeLambdaContext:
    """The attributes powertools reads from a Lambda context."""

    function_name: str = "devicepipe-ingest"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:devicepipe-ingest"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


class PrivateRedis:
    """A redis-server of a test's own on a free port, which the test may stop and start again."""

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        wait_listening(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server the test owns (skipped without the binary, except in CI, where .ci/run installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("needs the redis-server binary")
    server = PrivateRedis(binary)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL of the session's own (the local stack's launcher), superuser ``postgres`` on a free port; skipped
    when none can be started, except in CI, where .ci/run installs Debian's postgresql."""
    # Not pytest's tmp_path: its base directory is private to root, and as root the server runs as another user.
    data_dir = Path(tempfile.mkdtemp(prefix="devicepipe-pg-"))
    try:
        server = start_postgres(data_dir)
    except PostgresUnavailable as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI (.ci/run installs it): {exc}")
        pytest.skip(f"needs PostgreSQL: {exc}")
    yield server
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter with the project's code and layer on its path and ``env`` over a minimal
    environment (what a module does at import, e.g. a function's cold start); its standard output."""
    base = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "common")]),
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "tests",
        "POWERTOOLS_METRICS_NAMESPACE": "devicepipe",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
