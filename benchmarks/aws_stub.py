"""Real boto3 clients with the network cut at the HTTP layer.

A handler registered on botocore's ``before-send`` event answers each request as the service would, so a
benchmark pays for everything Lambda pays for (parameter validation, serialisation, checksums, signing, response
parsing) except the network itself. Python fakes that stand in for the client skip all of that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config

#: ``answer(operation, request body) -> response body`` for a JSON-protocol service (e.g. DynamoDB): the body is
#: the request's JSON parsed, or its raw bytes with ``parse_body=False``.
Answer = Callable[[str, Any], dict[str, Any]]
#: ``answer(operation, request) -> (headers, body)`` for a REST service (e.g. S3's REST-XML): the request is
#: botocore's prepared request (``method``, ``url``, ``headers``, ``body``).
RestAnswer = Callable[[str, Any], tuple[dict[str, str], bytes]]


class _Body:
    """The raw body botocore reads a response from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def stubbed_client(
    service: str,
    answer: Answer | RestAnswer,
    *,
    parse_body: bool = True,
    latency_s: float = 0.0,
    **config: Any,
) -> Any:
    """A new boto3 client (``config``: ``botocore.config.Config`` options) answered by ``stub``."""
    client = boto3.client(
        service,  # type: ignore[call-overload]
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "max_attempts": 2}).merge(Config(**config)),
    )
    return stub(client, answer, parse_body=parse_body, latency_s=latency_s)


def stub(client: Any, answer: Answer | RestAnswer, *, parse_body: bool = True, latency_s: float = 0.0) -> Any:
    """``client`` (as a function builds it, so the bench runs what Lambda runs) with its requests answered in the
    process; ``calls`` counts them by operation.

    ``latency_s`` is slept per request in the calling thread (the GIL released, as on a socket). The stub's own
    work (parsing the request, encoding the answer) is CPU Lambda would not spend: ``parse_body=False`` spares
    it for a JSON answer that does not read the request.
    """
    client.calls = {}
    is_json = client.meta.service_model.protocol == "json"

    def send(request: Any, event_name: str, **_: Any) -> AWSResponse:
        operation = event_name.rpartition(".")[2]
        client.calls[operation] = client.calls.get(operation, 0) + 1
        if latency_s:
            time.sleep(latency_s)
        headers = HTTPHeaders()
        headers["x-amzn-RequestId"] = "bench"
        if is_json:
            body = request.body or b"{}"
            reply = cast(Answer, answer)(operation, json.loads(body) if parse_body else body)
            headers["Content-Type"] = "application/x-amz-json-1.0"
            data = json.dumps(reply).encode()
        else:
            extra, data = cast(RestAnswer, answer)(operation, request)
            for name, value in extra.items():
                headers[name] = value
        return AWSResponse(request.url, 200, headers, _Body(data))

    client.meta.events.register(f"before-send.{client.meta.service_model.service_id.hyphenize()}", send)
    return client


def dynamodb_writes(operation: str, body: Any) -> dict[str, Any]:
    """DynamoDB's answer to the ingest's writes when every item is stored (the request is not read)."""
    if operation == "BatchWriteItem":
        return {"UnprocessedItems": {}}
    if operation == "PutItem":
        return {}
    raise NotImplementedError(operation)


def s3_puts(operation: str, request: Any) -> tuple[dict[str, str], bytes]:
    """S3's answer to PutObject: the object's ETag, no body."""
    if operation == "PutObject":
        return {"ETag": '"bench"'}, b""
    raise NotImplementedError(operation)
