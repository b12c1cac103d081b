"""GetRecords answered beside moto's server (``stream_reads``) gives what moto's own answer gives, cheaper.

Two servers in this process share moto's backends: one plain, one behind ``StreamReads``; the same streams are
read through both with the local stack's sources and compared.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devicepipe_tools.local import moto_fixes
from devicepipe_tools.local.esm import DynamoDBStreamSource, KinesisSource, StreamRecord, WireReads, read_all
from devicepipe_tools.local.net import free_port
from devicepipe_tools.local.stream_reads import StreamReads

REGION = "us-east-1"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str, StreamReads]]:
    moto_fixes.apply()
    plain_port, ours_port = free_port(), free_port()
    stop_plain, _ = moto_fixes.start_server(plain_port, lambda app: app)
    stop_ours, reads = moto_fixes.start_server(ours_port, StreamReads)
    yield f"http://127.0.0.1:{plain_port}", f"http://127.0.0.1:{ours_port}", reads
    stop_ours()
    stop_plain()


def client(endpoint: str, service: str, config: Config | None = None) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


def comparable(records: list[StreamRecord]) -> list[tuple[Any, ...]]:
    return [(r.event, r.sequence_number, round(r.arrival_s, 3), r.filter_view) for r in records]


def test_kinesis_records_are_the_ones_moto_answers(servers: tuple[str, str, StreamReads]) -> None:
    plain, ours, reads = servers
    kinesis = client(plain, "kinesis")
    kinesis.create_stream(StreamName="k", ShardCount=2)
    arn = kinesis.describe_stream(StreamName="k")["StreamDescription"]["StreamARN"]
    kinesis.put_records(
        StreamName="k",
        Records=[{"Data": json.dumps({"n": n}).encode(), "PartitionKey": f"p{n}"} for n in range(300)],
    )
    answered = reads.answered
    expected = read_all(KinesisSource(kinesis, arn, REGION))
    got = read_all(KinesisSource(client(ours, "kinesis"), arn, REGION))
    assert len(got) == 300 and comparable(got) == comparable(expected)
    assert reads.answered > answered  # answered beside moto, not by it
    # Read off the wire (the workers' way), answered beside moto or by moto itself: the same records
    for endpoint in (ours, plain):
        wire = read_all(KinesisSource(client(endpoint, "kinesis"), arn, REGION, WireReads(endpoint, REGION)))
        assert comparable(wire) == comparable(expected)

    # Paged by Limit, from a checkpoint, then empty at the end of the shard (the iterator stays where it is)
    source = KinesisSource(client(ours, "kinesis"), arn, REGION)
    shard = source.shards()[0]
    whole = [r for r in expected if r.event["eventID"].startswith(shard)]
    first, it = source.get(source.iterator(shard, "TRIM_HORIZON"), 7, shard)
    rest, it = source.get(source.iterator(shard, "TRIM_HORIZON", first[-1].sequence_number), 10_000, shard)
    assert comparable(first + rest) == comparable(whole) and len(first) == 7
    assert it is not None
    empty, again = source.get(it, 100, shard)
    assert empty == [] and source.get(again or "", 100, shard)[0] == []


def test_dynamodb_stream_records_are_the_ones_moto_answers(servers: tuple[str, str, StreamReads]) -> None:
    plain, ours, reads = servers
    dynamodb = client(plain, "dynamodb")
    table = dynamodb.create_table(
        TableName="t",
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in ("pk", "sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]
    for n in range(30):
        item = {"pk": {"S": f"d{n % 3}"}, "sk": {"S": "LATEST"}, "n": {"N": str(n)}, "m": {"M": {"t": {"N": "1.5"}}}}
        dynamodb.put_item(TableName="t", Item=item)
    dynamodb.delete_item(TableName="t", Key={"pk": {"S": "d0"}, "sk": {"S": "LATEST"}})
    arn = table["LatestStreamArn"]
    answered = reads.answered
    expected = read_all(DynamoDBStreamSource(client(plain, "dynamodbstreams"), arn, REGION))
    source = DynamoDBStreamSource(client(ours, "dynamodbstreams"), arn, REGION)
    got = read_all(source)
    assert [r.event["eventName"] for r in got].count("REMOVE") == 1 and len(got) == 31
    assert comparable(got) == comparable(expected)
    assert reads.answered > answered
    for endpoint in (ours, plain):
        wire = DynamoDBStreamSource(client(endpoint, "dynamodbstreams"), arn, REGION, WireReads(endpoint, REGION))
        assert comparable(read_all(wire)) == comparable(expected)

    # Our iterators page on from where the last answer stopped, and stay put at the end
    (shard,) = source.shards()
    first, it = source.get(source.iterator(shard, "AFTER_SEQUENCE_NUMBER", got[9].sequence_number), 5, shard)
    assert [r.sequence_number for r in first] == [r.sequence_number for r in got[10:15]]
    rest, it = source.get(it or "", 1000, shard)
    assert comparable(rest) == comparable(got[15:])
    empty, it = source.get(it or "", 1000, shard)
    assert empty == []
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "new"}, "sk": {"S": "LATEST"}})
    more, _ = source.get(it or "", 1000, shard)
    assert [r.event["dynamodb"]["Keys"]["pk"]["S"] for r in more] == ["new"]


def test_what_it_cannot_answer_goes_to_moto(servers: tuple[str, str, StreamReads]) -> None:
    plain, ours, reads = servers
    answered = reads.answered
    unknown = {
        "dynamodbstreams": "arn:aws:dynamodb:us-east-1:123456789012:table/none/stream/x|1|nope",
        "kinesis": "bm9uZTpzaGFyZElkLTAwMDAwMDAwMDAwMDow",  # "none:shardId-000000000000:0"
    }
    for service, iterator in unknown.items():
        errors = []
        for endpoint in (plain, ours):
            with pytest.raises(ClientError) as caught:
                client(endpoint, service, Config(retries={"max_attempts": 1})).get_records(ShardIterator=iterator)
            errors.append(caught.value.response["ResponseMetadata"]["HTTPStatusCode"])
        assert errors[0] == errors[1]  # moto's answer, whatever it is
    assert reads.answered == answered


def test_a_read_that_may_wait_is_answered_when_records_arrive(servers: tuple[str, str, StreamReads]) -> None:
    plain, ours, _ = servers
    kinesis = client(plain, "kinesis")
    kinesis.create_stream(StreamName="w", ShardCount=1)
    arn = kinesis.describe_stream(StreamName="w")["StreamDescription"]["StreamARN"]
    source = KinesisSource(client(ours, "kinesis"), arn, REGION, WireReads(ours, REGION))
    (shard,) = source.shards()
    # Nothing there: the answer comes when the wait is over, empty
    began = time.monotonic()
    got, it = source.get(source.iterator(shard, "TRIM_HORIZON"), 100, shard, wait_s=0.3)
    assert got == [] and 0.28 <= time.monotonic() - began < 1.0
    # A record put while a read waits: answered at once with it, long before the wait is over
    threading.Timer(0.2, lambda: kinesis.put_record(StreamName="w", Data=b'{"n": 1}', PartitionKey="p")).start()
    began = time.monotonic()
    got, _ = source.get(it or "", 100, shard, wait_s=1.0)
    assert [json.loads(base64.b64decode(r.event["kinesis"]["data"])) for r in got] == [{"n": 1}]
    assert time.monotonic() - began < 0.6
