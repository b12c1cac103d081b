"""The read API's HTTP client, for the ``devicepipe read`` commands: where the API is, how requests are
authorised, and pages followed.

A deployed API's URL is its stack's ``ReadApiUrl`` output. Requests to AWS are signed with SigV4 (botocore's
``SigV4Auth``, service ``execute-api``, credentials from boto3's chain); a JWT deployment takes a Bearer token
instead; the local stack needs neither. HTTP through ``urllib.request``: the client makes one kind of request
(GET, JSON back), which needs no new dependency. Every failure becomes one line of text, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError


class RequestFailed(RuntimeError):
    """A request got no answer, or an error answer; the message says which, in one line."""


class NoApi(RuntimeError):
    """The API's URL could not be found (no such stack, or no ``ReadApiUrl`` output)."""


#: Headers a request needs to be authorised, from its method and URL.
Auth = Callable[[str, str], dict[str, str]]


def no_auth(method: str, url: str) -> dict[str, str]:
    return {}


def bearer(token: str) -> Auth:
    """``Authorization: Bearer`` (an API with a JWT authorizer)."""
    return lambda method, url: {"Authorization": f"Bearer {token}"}


def sigv4(region: str, session: boto3.session.Session | None = None) -> Auth:
    """SigV4 for ``execute-api`` in ``region`` (an API with IAM authorization), credentials from ``session``'s
    chain; ``NoCredentialsError`` when there are none."""
    credentials = (session or boto3.session.Session()).get_credentials()
    if credentials is None:
        raise NoCredentialsError()

    def sign(method: str, url: str) -> dict[str, str]:
        request = AWSRequest(method=method, url=url)
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(request)
        return dict(request.headers.items())

    return sign


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_region(url: str) -> str | None:
    """The region of an ``execute-api`` URL (``https://abc.execute-api.eu-west-1.amazonaws.com``)."""
    found = re.fullmatch(r"[^.]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?", urlsplit(url).hostname or "")
    return found[1] if found else None


def deployed_api_url(region: str, stack_name: str, cloudformation: Any = None) -> str:
    """The ``ReadApiUrl`` output of a deployed stack."""
    cloudformation = cloudformation or boto3.client("cloudformation", region_name=region)
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise NoApi(f"stack {stack_name} in {region}: {exc.response['Error']['Message']}") from None
    except NoCredentialsError:
        raise
    except BotoCoreError as exc:
        raise NoApi(f"cannot look up stack {stack_name} in {region}: {exc}") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if "ReadApiUrl" not in outputs:
        raise NoApi(f"stack {stack_name} in {region} has no ReadApiUrl output (is the read API deployed there?)")
    return str(outputs["ReadApiUrl"])


@dataclass
class ReadClient:
    """GETs JSON documents from the read API at ``base_url``."""

    base_url: str
    auth: Auth = no_auth
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise NoApi(f"the API URL must be http(s)://..., got {self.base_url!r}")

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON document at ``path`` (``params`` that are None are left out); ``RequestFailed`` otherwise."""
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = self.base_url.rstrip("/") + path + (f"?{query}" if query else "")
        headers = {"Accept": "application/json", **self.auth("GET", url)}
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, see __post_init__
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise RequestFailed(error_message(exc.code, exc.read())) from None
        except TimeoutError:
            raise RequestFailed(f"no answer from {self.base_url} within {self.timeout_s:g} s") from None
        except OSError as exc:  # URLError and the connection errors it does not wrap
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            text = getattr(reason, "strerror", None) or str(reason)
            raise RequestFailed(f"cannot reach {self.base_url}: {text}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise RequestFailed(f"{url} answered with something other than JSON: {body[:100]!r}") from None
        if not isinstance(doc, dict):
            raise RequestFailed(f"{url} answered with JSON that is not an object: {body[:100]!r}")
        return doc

    def get_all(
        self, path: str, params: dict[str, Any], items: str, progress: Callable[[int, int], None]
    ) -> dict[str, Any]:
        """Every page, following ``next_cursor``: the first page's document holding every page's ``items``.
        ``progress(pages, items so far)`` after each page but the last."""
        first = doc = self.get(path, params)
        collected = list(doc[items])
        pages = 1
        while cursor := doc.get("next_cursor"):
            progress(pages, len(collected))
            doc = self.get(path, {**params, "cursor": cursor})
            collected += doc[items]
            pages += 1
        return {**first, items: collected, "next_cursor": None}


def error_message(status: int, body: bytes) -> str:
    """One line from an error answer: the read API's ``{"error": {...}}``, API Gateway's ``{"message": ...}``,
    or the start of whatever else came back."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        error = doc["error"]
        return f"{error.get('message') or error.get('code')} (HTTP {status}, {error.get('code', 'error')})"
    if isinstance(doc, dict) and "message" in doc:
        return f"{doc['message']} (HTTP {status})"
    text = body.decode(errors="replace").strip()
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")
