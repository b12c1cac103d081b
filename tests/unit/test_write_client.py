"""The hot writers' DynamoDB client (``dynamo.write_client``) and the functions' clients built with it: the same
requests as a default boto3 client sends, without client-side validation, botocore's item serialisation or a
rebuilt User-Agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import botocore
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config
from botocore.exceptions import ParamValidationError
from botocore.serialize import JSONSerializer

from benchmarks.aws_stub import s3_puts, stub
from devicepipe.dynamo import LATEST_CONDITION, send_items_as_is, write_client
from functions.cache_updater import app as cache_app
from functions.ingest import app as ingest_app
from functions.stager import app as stager_app

ITEM = {
    "pk": {"S": "DEVICE#d-1"},
    "sk": {"S": "R#2026-11-02T09:00:00.000000Z#00000000000000000001"},
    "metrics": {"M": {"temp_c": {"N": "21.5"}, "door": {"S": "closed"}, "ok": {"BOOL": True}, "x": {"NULL": True}}},
    "tags": {"L": [{"S": "a"}, {"N": "2"}]},
}


class Wire:
    """What a client sends (operation, body, headers per request); answers each as DynamoDB does, or with
    ``errors`` first (status, code), one per request."""

    def __init__(self, client: Any, errors: list[tuple[int, str]] | None = None) -> None:
        self.sent: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.errors = list(errors or [])
        client.meta.events.register("before-send.dynamodb", self.send)

    def send(self, request: Any, event_name: str, **_: Any) -> AWSResponse:
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        self.sent.append((event_name.rpartition(".")[2], json.loads(request.body), headers))
        status, body = 200, dict[str, Any]({"UnprocessedItems": {}} if "BatchWriteItem" in event_name else {})
        if self.errors:
            status, code = self.errors.pop(0)
            body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code}
        reply = HTTPHeaders()
        reply["Content-Type"] = "application/x-amz-json-1.0"
        return AWSResponse(request.url, status, reply, _Raw(json.dumps(body).encode()))


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def default_client() -> Any:
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 3}))


def writes(client: Any) -> None:
    client.batch_write_item(RequestItems={"readings": [{"PutRequest": {"Item": ITEM}}]})
    client.put_item(
        TableName="readings",
        Item=ITEM,
        ConditionExpression=LATEST_CONDITION,
        ExpressionAttributeValues={":version": {"S": "2026-11-02T09:00:00.000000Z#00000000000000000001"}},
    )


def test_writes_send_the_same_requests_as_a_default_client() -> None:
    # Given a default client and the hot writers' client
    default, hot = default_client(), write_client(retries={"mode": "standard", "max_attempts": 3})
    sent_default, sent_hot = Wire(default), Wire(hot)
    # When both make the ingest's two writes
    writes(default)
    writes(hot)
    # Then DynamoDB gets the same operations with the same JSON bodies and targets
    assert [(op, body) for op, body, _ in sent_hot.sent] == [(op, body) for op, body, _ in sent_default.sent]
    targets = [h["X-Amz-Target"] for _, _, h in sent_hot.sent]
    assert targets == ["DynamoDB_20120810.BatchWriteItem", "DynamoDB_20120810.PutItem"]
    assert sent_hot.sent[0][1]["RequestItems"]["readings"][0]["PutRequest"]["Item"] == ITEM


def test_botocore_does_not_serialise_the_items_attribute_by_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    visited: list[str] = []
    walk = JSONSerializer._serialize_type_structure  # type: ignore[attr-defined]

    def counted(self: Any, serialized: Any, value: Any, shape: Any, key: Any) -> None:
        visited.append(shape.name)
        walk(self, serialized, value, shape, key)

    monkeypatch.setattr(JSONSerializer, "_serialize_type_structure", counted)
    default, hot = default_client(), write_client()
    Wire(default), Wire(hot)
    writes(default)
    assert visited.count("AttributeValue") > 2 * len(ITEM)  # every attribute of both items, nested ones too
    visited.clear()
    writes(hot)
    assert visited.count("AttributeValue") == 1  # the condition's :version only


def test_the_callers_parameters_are_left_as_they_were() -> None:
    hot = write_client()
    Wire(hot)
    request_items = {"readings": [{"PutRequest": {"Item": ITEM}}]}
    item = dict(ITEM)
    hot.batch_write_item(RequestItems=request_items)
    hot.put_item(TableName="readings", Item=item)
    assert request_items == {"readings": [{"PutRequest": {"Item": ITEM}}]}
    assert item == ITEM


def test_binary_attributes_take_botocores_path() -> None:
    # Given an item with a B attribute (bytes: botocore base64-encodes them, orjson cannot write them)
    item = {**ITEM, "blob": {"B": b"\x00\x01"}}
    default, hot = default_client(), write_client()
    sent_default, sent_hot = Wire(default), Wire(hot)
    default.put_item(TableName="readings", Item=item)
    hot.put_item(TableName="readings", Item=item)
    # Then the request is botocore's own
    assert sent_hot.sent[0][1] == sent_default.sent[0][1]
    assert sent_hot.sent[0][1]["Item"]["blob"] == {"B": "AAE="}


def test_botocores_retries_resend_the_whole_body() -> None:
    hot = write_client(retries={"mode": "standard", "max_attempts": 3})
    wire = Wire(hot, errors=[(400, "ProvisionedThroughputExceededException"), (500, "InternalServerError")])
    hot.batch_write_item(RequestItems={"readings": [{"PutRequest": {"Item": ITEM}}]})
    assert len(wire.sent) == 3
    assert all(body["RequestItems"]["readings"][0]["PutRequest"]["Item"] == ITEM for _, body, _ in wire.sent)


def test_parameters_are_not_validated_in_the_client() -> None:
    # Given a request botocore's validation refuses (a number where the model has a string)
    bad = {"TableName": "readings", "Item": ITEM, "ConditionExpression": 5}
    with pytest.raises(ParamValidationError):
        default = default_client()
        Wire(default)
        default.put_item(**bad)
    # Then the hot client sends it: DynamoDB answers, and a ValidationException reaches the writer's handling
    hot = write_client()
    wire = Wire(hot)
    hot.put_item(**bad)
    assert wire.sent[0][1]["ConditionExpression"] == 5


def test_the_user_agent_is_fixed() -> None:
    hot = write_client()
    wire = Wire(hot)
    writes(hot)
    agents = {h["User-Agent"] for _, _, h in wire.sent}
    assert len(agents) == 1
    assert agents.pop().startswith(f"Boto3/{boto3.__version__} Botocore/{botocore.__version__} exec-env/")


def test_items_as_is_on_a_validating_client_validates_only_the_rest() -> None:
    # The stand-ins for the items pass botocore's validation; the items themselves go out as they are
    client = send_items_as_is(default_client())
    wire = Wire(client)
    writes(client)
    assert wire.sent[1][1]["Item"] == ITEM


def test_the_functions_build_their_dynamodb_writers_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLE_NAME", "readings")
    monkeypatch.setenv("QUARANTINE_BUCKET", "quarantine")
    ingestor, _ = ingest_app._ingestor.__wrapped__()
    repairer, _ = cache_app._repairer.__wrapped__()
    for client in (ingestor.writer.client, repairer.client):
        wire = Wire(client)
        client.put_item(TableName="readings", Item=ITEM, ConditionExpression=5)  # not validated
        assert " devicepipe" in wire.sent[0][2]["User-Agent"]


def test_the_stagers_s3_client_does_not_validate() -> None:
    s3 = stub(stager_app._s3.__wrapped__(), s3_puts)
    s3.put_object(Bucket="staging", Key="k.jsonl.gz", Body=b"x", ContentType=5)
    assert s3.calls == {"PutObject": 1}
