"""MigrateFunction: the CloudFormation custom resource that applies the registry's migrations at deploy time.

Create and Update: connect to the primary cluster's writer with the master secret (``REGISTRY_SECRET_ARN``, a
Secrets Manager JSON with ``username`` and ``password``), apply ``migrations/`` (``registry.migrate``: each version
once, so an Update or a rollback's Update re-runs as a no-op) and answer SUCCESS with the versions applied.
Delete: SUCCESS without touching the data (the cluster's own DeletionPolicy decides its fate). Any failure: FAILED
with a one-line reason.

The answer is a PUT of a JSON document to the request's presigned ``ResponseURL``
(https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/crpg-ref-responses.html), with urllib: no extra
dependency. A timer answers FAILED shortly before the function's timeout, so a hung connection never leaves the
stack waiting on CloudFormation's own one-hour timeout for custom resources.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from devicepipe import registry
from devicepipe.config import ConfigError, RegistrySettings
from devicepipe.observability import logger
from devicepipe.retry import Backoff

#: Must be the same in every answer for the resource; a different one would read as a replacement.
PHYSICAL_ID = "devicepipe-registry-schema"
#: "The total size of the response body can't exceed 4096 bytes" (the page above).
MAX_RESPONSE_BYTES = 4096
_MAX_REASON = 1000
#: The timer answers this long before the timeout: time for the PUT and its retries.
GUARD_MARGIN_S = 10.0
_PUT_BACKOFF = Backoff(base_s=0.5, cap_s=3.0, max_attempts=4)

Send = Callable[[str, bytes], None]


def put_response(url: str, body: bytes, timeout_s: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """PUT the answer to the presigned URL, retrying connection errors and 5xx a few times.

    ``Content-Type`` is sent empty, as AWS's own cfn-response module does: the URL is signed without one.
    """
    if urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"ResponseURL must be an http(s) URL, got {url[:40]!r}")
    request = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": ""})  # noqa: S310 - checked
    for attempt in range(_PUT_BACKOFF.max_attempts):
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 - scheme checked above
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt + 1 == _PUT_BACKOFF.max_attempts:
                raise
        except OSError:  # URLError, timeouts, refused connections
            if attempt + 1 == _PUT_BACKOFF.max_attempts:
                raise
        sleep(_PUT_BACKOFF.delay(attempt))


class Responder:
    """Answers one custom resource request exactly once, whichever of the handler and its timer comes first."""

    def __init__(self, event: Mapping[str, Any], log_stream: str = "", send: Send = put_response) -> None:
        self.event, self.log_stream, self.send = event, log_stream, send
        self._lock = threading.Lock()
        self.sent = False

    def answer(self, status: str, reason: str = "", data: Mapping[str, str] | None = None) -> bool:
        """Send SUCCESS or FAILED; False (and nothing sent) when an answer has already gone."""
        with self._lock:
            if self.sent:
                return False
            self.sent = True
        body = self.body(status, reason, data or {})
        try:
            self.send(str(self.event["ResponseURL"]), body)
        except Exception:
            logger.exception("could not answer CloudFormation", extra={"status": status})
            return False
        logger.info("answered CloudFormation", extra={"status": status, "reason": reason})
        return True

    def body(self, status: str, reason: str, data: Mapping[str, str]) -> bytes:
        e = self.event
        reason = " ".join(reason.split())[:_MAX_REASON]  # one line: the console shows it as the event's status
        if self.log_stream:
            reason = f"{reason} (log stream {self.log_stream})".strip()
        document = {
            "Status": status,
            "Reason": reason or status,
            "PhysicalResourceId": e.get("PhysicalResourceId") or PHYSICAL_ID,
            "StackId": e.get("StackId", ""),
            "RequestId": e.get("RequestId", ""),
            "LogicalResourceId": e.get("LogicalResourceId", ""),
            "NoEcho": False,
            "Data": dict(data),
        }
        raw = json.dumps(document).encode()
        if len(raw) > MAX_RESPONSE_BYTES:  # only Data can grow: keep the status, drop the detail
            document["Data"] = {k: v[:200] for k, v in data.items()}
            raw = json.dumps(document).encode()
        return raw


def handle(event: Mapping[str, Any], migrate: Callable[[], list[str]]) -> dict[str, str]:
    """The resource's ``Data`` for a request (``Applied``: the versions this run applied)."""
    kind = event.get("RequestType")
    if kind == "Delete":
        return {}
    if kind not in ("Create", "Update"):
        raise ValueError(f"unknown RequestType {kind!r}")
    applied = migrate()
    return {"Applied": ",".join(applied) or "none"}


def migrate_writer() -> list[str]:
    """Apply the migrations on the primary's writer as the master user."""
    arn = os.environ.get("REGISTRY_SECRET_ARN", "").strip()
    if not arn:
        raise ConfigError("MigrateFunction settings: REGISTRY_SECRET_ARN is required")
    secret = json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])
    settings = replace(RegistrySettings.from_env(), user=secret["username"], password=secret["password"])
    db = registry.connect(settings)
    try:
        return registry.migrate(db)
    finally:
        db.close()


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> None:
    responder = Responder(event, getattr(context, "log_stream_name", ""))
    wait_s = max(context.get_remaining_time_in_millis() / 1000 - GUARD_MARGIN_S, 0.0)
    guard = threading.Timer(wait_s, responder.answer, ("FAILED", "timed out before the migrations finished"))
    guard.daemon = True
    guard.start()
    try:
        responder.answer("SUCCESS", data=handle(event, migrate_writer))
    except Exception as exc:
        logger.exception("registry migration failed", extra={"request_type": event.get("RequestType")})
        responder.answer("FAILED", f"{type(exc).__name__}: {exc}")
    finally:
        guard.cancel()
