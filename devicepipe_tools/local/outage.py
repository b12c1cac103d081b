"""Regional outages on the local stack: `devicepipe local outage REGION` / `local recover REGION`.

A region that is down answers every AWS request signed for it with 503 ServiceUnavailable (producers see it
and fail over), its functions stop polling (they resume where their checkpoints are), and global-table
replication to and from it waits until it is back. The set of down regions lives in ``outages.json`` in the
stack's state directory: the supervisor and every worker read it, so it works across processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from devicepipe_tools.local import files

_REGION_IN_SIGNATURE = re.compile(rb"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


def outages_path(state_dir: Path) -> Path:
    return state_dir / files.OUTAGES


def down_regions(state_dir: Path) -> set[str]:
    try:
        return set(json.loads(outages_path(state_dir).read_text()))
    except (OSError, ValueError):
        return set()


def set_down(state_dir: Path, region: str, down: bool) -> set[str]:
    """Mark ``region`` down or back up; returns the regions down now."""
    regions = down_regions(state_dir)
    (regions.add if down else regions.discard)(region)
    tmp = outages_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(regions)))
    tmp.replace(outages_path(state_dir))
    return regions


class OutageMiddleware:
    """WSGI middleware for moto's server: requests signed for a down region get 503."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.down: set[str] = set()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.down:
            match = _REGION_IN_SIGNATURE.search(environ.get("HTTP_AUTHORIZATION", "").encode())
            region = match[1].decode() if match else None
            if region in self.down:
                body = json.dumps(
                    {"__type": "ServiceUnavailable", "message": f"{region} is down (devicepipe local outage)"}
                ).encode()
                start_response(
                    "503 Service Unavailable",
                    [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self.app(environ, start_response)  # type: ignore[no-any-return]
