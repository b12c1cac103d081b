"""Regional outages of the local stack: the shared file and the moto middleware."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devicepipe_tools.local.outage import OutageMiddleware, down_regions, set_down


def test_regions_go_down_and_come_back(tmp_path: Path) -> None:
    assert down_regions(tmp_path) == set()
    assert set_down(tmp_path, "eu-west-1", True) == {"eu-west-1"}
    assert set_down(tmp_path, "us-east-1", True) == {"eu-west-1", "us-east-1"}
    assert set_down(tmp_path, "eu-west-1", False) == {"us-east-1"}
    assert down_regions(tmp_path) == {"us-east-1"}


def call(app: OutageMiddleware, region: str) -> tuple[str, bytes]:
    status: list[str] = []
    auth = f"AWS4-HMAC-SHA256 Credential=testing/20261122/{region}/kinesis/aws4_request, SignedHeaders=host"
    body = b"".join(app({"HTTP_AUTHORIZATION": auth}, lambda s, _h: status.append(s)))
    return status[0], body


def test_requests_signed_for_a_down_region_get_503_and_others_pass() -> None:
    def backend(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    app = OutageMiddleware(backend)
    app.down = {"eu-west-1"}
    status, body = call(app, "eu-west-1")
    assert status.startswith("503") and b"ServiceUnavailable" in body
    assert call(app, "us-east-1") == ("200 OK", b"ok")
