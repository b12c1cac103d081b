"""Real boto3 clients with the network cut at the HTTP layer.

A handler registered on botocore's ``before-send`` event answers each request as the service would, so a
benchmark pays for everything Lambda pays for (parameter validation, serialisation, signing, response parsing)
except the network itself. Python fakes that stand in for the client skip all of that.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config

#: ``answer(operation, request body as JSON) -> response body`` (a JSON-protocol service, e.g. DynamoDB).
Answer = Callable[[str, dict[str, Any]], dict[str, Any]]


class _Body:
    """The raw body botocore reads a response from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def stubbed_client(service: str, answer: Answer, **config: Any) -> Any:
    """A boto3 client whose requests never leave the process; ``calls`` counts them by operation."""
    client: Any = boto3.client(
        service,  # type: ignore[call-overload]
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "max_attempts": 2}, **config),
    )
    client.calls = {}

    def send(request: Any, **_: Any) -> AWSResponse:
        operation = request.headers["X-Amz-Target"].decode().rpartition(".")[2]
        client.calls[operation] = client.calls.get(operation, 0) + 1
        body = json.dumps(answer(operation, json.loads(request.body or b"{}"))).encode()
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        headers["x-amzn-RequestId"] = "bench"
        return AWSResponse(request.url, 200, headers, _Body(body))

    client.meta.events.register(f"before-send.{service}", send)
    return client
